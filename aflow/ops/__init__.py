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
"""

from __future__ import annotations

from .._deprecated import moved as _moved
from ._artifacts import ArtifactValue as ArtifactValue
from ._artifacts import download_artifact as download_artifact
from ._op import OP as OP
from ._op import PythonOPTemplate as PythonOPTemplate
from ._op import Slices as Slices
from ._op import op as op
from ._sign import OPIO as OPIO
from ._sign import Artifact as Artifact
from ._sign import OPIOSign as OPIOSign
from ._sign import Parameter as Parameter
from ._step import OutputRef as OutputRef
from ._step import Step as Step
from ._workflow import DAG as DAG
from ._workflow import OutputParameter as OutputParameter
from ._workflow import StepIO as StepIO
from ._workflow import StepRecord as StepRecord
from ._workflow import Workflow as Workflow

__all__ = [
    "Artifact",
    "ArtifactValue",
    "DAG",
    "OP",
    "OPIO",
    "OPIOSign",
    "OutputParameter",
    "OutputRef",
    "Parameter",
    "PythonOPTemplate",
    "Slices",
    "Step",
    "StepIO",
    "StepRecord",
    "Workflow",
    "download_artifact",
    "op",
]

#: Exceptions this namespace used to export too (deprecated): their one home is aflow.errors.
__getattr__ = _moved(
    "aflow.ops",
    ["MissingInputError", "OpIOError", "SlicesBelowThreshold", "UntrustedManifest", "WhenError"],
    to="aflow.errors",
)
