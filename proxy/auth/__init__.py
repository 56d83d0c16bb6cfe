"""Edge authentication: OAuth 2.1 resource server checks (JWT access tokens via JWKS,
Protected Resource Metadata) run before routing."""
