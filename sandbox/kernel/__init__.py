"""One module per kernel mechanism, each small and named after the feature it drives:
seccomp (filters), unotify / unotify_native (seccomp user-notification), ebpf (the exec tracer),
cgroup (a v2 leaf per run), child (spawning the sandboxed child), kmsg (kernel log reader).
They take plain data (paths, rules, fds) and know nothing of profiles' meaning or of runs.
"""
