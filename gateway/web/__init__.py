"""The local web app: REST API (and pages) served by Litestar."""
