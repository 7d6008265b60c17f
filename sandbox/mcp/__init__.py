"""`glassbreak mcp`: glassbreak as a Model Context Protocol server (docs/mcp.md).

A thin client of the daemon, over stdio (a local harness starts it as the agent's unix user)
or streamable HTTP (run as the agent's unix user; remote clients prove the agent with a token
the daemon verifies). The kernel still says who runs (SO_PEERCRED at the daemon); nothing an
MCP client sends chooses an identity, a profile or an approver beyond what the CLI allows.

  client.py   the daemon protocol: ops and captured runs (standard library only)
  capture.py  bounded output capture with a truncation marker (pure)
  server.py   the MCP tools and resources (the `mcp` SDK, imported only here)
"""
