"""The wire: routes, the streaming request, responses, ranges, error rendering and access logs."""
