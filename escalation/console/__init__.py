"""The operator's console, served by `glassbreak serve` beside the approval API: server-rendered
pages for the people who decide (inbox, request, grants, audit, a run's process tree), signed
in with an approver token. Decisions made here go through the same EscalationService.decide /
revoke as the CLI, the HTTP API and Slack. See views.py for the routes (the page
bodies are in requestview, grantview, auditview, traceview), auth.py for sessions, CSRF, client
networks and size caps."""

from escalation.console.views import Console

__all__ = ["Console"]
