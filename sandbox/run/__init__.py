"""One run, orchestrated: the supervisor (the one place where policy and mechanisms meet), the
enforcement layers it iterates, the exec gate, the daemon (warm runs) and its clients."""
