"""Pure policy: what a profile says and what it decides. No kernel calls, no run state.

profile (models) <- source (files and lines) <- merge (`extends`) <- loader (search path, examples);
argv (the getopt_long model), resolve (which program a name is), decision, check (the one
decision function the pre-check, the exec gate and `explain` share).
"""
