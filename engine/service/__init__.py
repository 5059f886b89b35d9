"""The application service: create, update, transition, batches and list queries, each one
unit of work."""
