"""The face: the `glassbreak` command line (main), its lazily loaded subcommands (profile,
doctor, trace), and how results are rendered for people."""
