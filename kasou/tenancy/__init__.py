"""Cloud tenancy: users, API tokens, projects, roles, quotas, the audit log, rate limits."""
