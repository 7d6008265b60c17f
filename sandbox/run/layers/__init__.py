"""The enforcement layers of a run, as one list the supervisor iterates.

  base      RunContext, LayerResult and EnforcementLayer (the interface every layer implements)
  seccomp   SeccompLayer: the syscall filter
  execgate  ExecGateLayer: every exec of the tree (sandbox.run.execgate)
  network   NetworkLayer: egress (sandbox.run.network)
  landlock  LandlockLayer, FsBlock: the filesystem domain (sandbox.run.filesystem)

The credentials layer lives with its mechanism (sandbox.run.credentials.CredentialsLayer).
The supervisor prepares them in list order: CredentialsLayer (when the run has credentials),
LandlockLayer, SeccompLayer, ExecGateLayer, NetworkLayer. The names are handed on here, so
`from sandbox.run.layers import X` names any of them.
"""

from sandbox.run.layers.base import EnforcementLayer, LayerResult, Mode, RunContext
from sandbox.run.layers.execgate import ExecGateLayer, user_visible
from sandbox.run.layers.landlock import FsBlock, LandlockLayer
from sandbox.run.layers.network import NetworkLayer
from sandbox.run.layers.seccomp import SeccompLayer

__all__ = ["EnforcementLayer", "ExecGateLayer", "FsBlock", "LandlockLayer", "LayerResult",
           "Mode", "NetworkLayer", "RunContext", "SeccompLayer", "user_visible"]
