"""Server-rendered pages of the local UI, one module per area."""
