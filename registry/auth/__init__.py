"""Authentication and authorization: who is asking, and may they do what they ask."""
