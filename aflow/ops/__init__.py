"""dflow-style typed operators, run in-process on aflow's scheduler.

An ``OP`` declares typed input and output signatures (checked with pydantic in
strict mode) and may pass files as ``Artifact`` values. ``Step`` wires an op's
inputs to literals or to other steps' outputs; a ``Workflow`` runs steps in
sequence or in parallel, a ``DAG`` orders them by their wiring::

    from aflow.ops import OP, OPIO, OPIOSign, Artifact, Step, Workflow, download_artifact

    wf = Workflow("hello").add(Step("step0", WriteFile, parameters={"msg": "hi", "number": 1}))
    async with aflow.Runtime():
        await wf.submit()
        await wf.wait()                       # "Succeeded"
        step = wf.query_step(name="step0")[0]
        download_artifact(step.outputs.artifacts["out_art"], path="out")

Unlike dflow's local debug mode, retries and timeouts apply, skipped steps
show in queries, and every attempt gets a fresh working directory.

An op raises ``aflow.errors.TransientError`` for a failure worth another try and
``aflow.errors.FatalError`` for one that is never retried (``from aflow.ops import
TransientError`` works too, as ``dflow.python``'s does).
"""

from __future__ import annotations

from .._deprecated import moved_from as _moved_from
from ._artifacts import ArtifactValue as ArtifactValue
from ._artifacts import download_artifact as download_artifact
from ._loops import argo_len as argo_len
from ._loops import argo_range as argo_range
from ._loops import argo_sequence as argo_sequence
from ._op import OP as OP
from ._op import PythonOPTemplate as PythonOPTemplate
from ._op import Slices as Slices
from ._op import op as op
from ._sign import OPIO as OPIO
from ._sign import Artifact as Artifact
from ._sign import BigParameter as BigParameter
from ._sign import OPIOSign as OPIOSign
from ._sign import Parameter as Parameter
from ._step import OutputRef as OutputRef
from ._step import Step as Step
from ._template import DAG as DAG
from ._template import IfExpression as IfExpression
from ._template import InputArtifact as InputArtifact
from ._template import InputParameter as InputParameter
from ._template import Inputs as Inputs
from ._template import OutputArtifact as OutputArtifact
from ._template import OutputParameter as OutputParameter
from ._template import Outputs as Outputs
from ._template import Steps as Steps
from ._template import if_expression as if_expression
from ._upload import upload_artifact as upload_artifact
from ._workflow import ParameterValue as ParameterValue
from ._workflow import StepIO as StepIO
from ._workflow import StepRecord as StepRecord
from ._workflow import Workflow as Workflow

__all__ = [
    "Artifact",
    "ArtifactValue",
    "BigParameter",
    "DAG",
    "IfExpression",
    "InputArtifact",
    "InputParameter",
    "Inputs",
    "OP",
    "OPIO",
    "OPIOSign",
    "OutputArtifact",
    "OutputParameter",
    "OutputRef",
    "Outputs",
    "Parameter",
    "ParameterValue",
    "PythonOPTemplate",
    "Slices",
    "Step",
    "StepIO",
    "StepRecord",
    "Steps",
    "Workflow",
    "argo_len",
    "argo_range",
    "argo_sequence",
    "download_artifact",
    "if_expression",
    "op",
    "upload_artifact",
]

#: Exceptions this namespace used to export too (deprecated): their one home is aflow.errors.
_MOVED = frozenset(
    ["MissingInputError", "OpIOError", "SlicesBelowThreshold", "UntrustedManifest", "WhenError"]
)
#: dflow's spellings (``from dflow.python import TransientError``): served from aflow.errors,
#: without a warning, and not listed (aflow.errors is their one home).
_DFLOW_NAMES = frozenset(["FatalError", "IgnoredOption", "TransientError"])


def __getattr__(name: str) -> object:
    if name in _DFLOW_NAMES:
        from .. import errors

        return getattr(errors, name)
    if name in _MOVED:
        return _moved_from("aflow.ops", name, to="aflow.errors")
    raise AttributeError(f"module 'aflow.ops' has no attribute {name!r}")
