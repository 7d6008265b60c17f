"""glassbreak's runner, in layers (each layer imports only the ones below it):

  sandbox.cli      the face: the `glassbreak` command line, doctor, trace, rendering
  sandbox.run      one run: the supervisor (where policy and mechanisms meet), its enforcement
                   layers, the exec gate, the daemon and its clients
  sandbox.kernel   one module per kernel mechanism (seccomp, user-notification, eBPF, cgroup v2,
                   the child's spawn, kmsg); no policy
  sandbox.policy   pure policy: profile models, loading and merging, the argv model, program
                   resolution, decisions; no kernel, no run state
  errors, events, paths, audit: the shared vocabulary every layer speaks
"""
