"""One module per registry resource; each exports async handlers ``(ctx, request, route)``."""
