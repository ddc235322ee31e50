"""IPython magics (%load_ext gaudi_nb): %gaudi_attach, %gaudi_provision, %gaudi_train / %%gaudi_train, %gaudi_runs, %gaudi_watch, %gaudi_stop, %gaudi_resume, %gaudi_cost."""
from __future__ import annotations

import argparse
import hashlib
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Enum, Float, Int, Unicode

from .. import api
from ..errors import GaudiNbError
from ..machine_spec import AttachSpec, ProvisionSpec
from ..project import project_settings, run_defaults
from ..spec import RunSpec, TargetAddress, option_fields, parse_mapping
from ..spec import parse_target as spec_parse_target
from .magic_output import RunList, catalog_html, estimate_html, machines_html, money_now, money_now_html, run_cost_html
from .panel import UPDATE_INTERVAL_S


# -- targets -------------------------------------------------------------------------
def parse_target(text: str) -> TargetAddress:
    """The spec's parser, with a UsageError for the magics."""
    try:
        return spec_parse_target(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def describe_target(parsed: TargetAddress) -> str:
    if parsed.kind == "ssh":
        return f"{parsed.user}@{parsed.host} port {parsed.port} over SSH"
    if parsed.kind == "node":
        return f"the attached node {parsed.text}"
    if parsed.kind == "nodes":
        return f"the attached nodes {parsed.text.replace(',', ', ')} (one run across them: --nodes {len(parsed.text.split(','))})"
    return "this machine"


# -- options: the CLI's, taken from the specs ---------------------------------------------
def spec_arguments(model: Any = None, skip: Tuple[str, ...] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add every field of a spec (RunSpec by default) as --option, its positional fields as arguments (the CLI's
    names, from spec.option_fields) to a @magic_arguments magic. Values are checked by the spec, as the CLI's are."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for field in reversed(option_fields(model)):
            if field.name in skip:
                continue
            if field.positional:
                func = argument(field.name, help=field.help)(func)
                continue
            # choices are the spec's to check (one line, as the CLI says it), and the help's to list
            kwargs: Dict[str, Any] = {"dest": field.name, "default": None, "help": field.help + (f" (one of {', '.join(field.choices)})" if field.choices else "")}
            if field.type is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs.update(type=field.type, metavar=field.name.upper())
            func = argument(field.flag, **kwargs)(func)
        return func

    return decorate


def given(args: argparse.Namespace, model: Any) -> Dict[str, Any]:
    """The spec's fields the magic's line gave (None: not given)."""
    return {name: getattr(args, name) for name in model.model_fields if getattr(args, name, None) is not None}


def pyproject_defaults(start: Optional[Path] = None) -> Dict[str, Any]:
    """[tool.gaudi_nb] of the nearest pyproject.toml (gaudi_nb.project), with a UsageError for the magics."""
    try:
        return project_settings(start)
    except GaudiNbError as exc:
        raise _one_line(exc) from None


def _one_line(exc: BaseException) -> UsageError:
    return UsageError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)


def _attach_node(args: argparse.Namespace) -> Dict[str, Any]:
    """gaudi_nb.attach with the magic's options (AttachSpec's); its progress printed, its errors one UsageError line."""
    from ..nodes.attach import attach

    try:
        spec = AttachSpec.from_options(url=args.target, **given(args, AttachSpec))
        return attach(**spec.keywords(), progress=print)
    except GaudiNbError as exc:
        raise _one_line(exc) from None


def _known_node(name: str) -> Dict[str, Any]:
    from ..store import RunStore

    try:
        return RunStore().get_node(name)
    except GaudiNbError as exc:
        raise _one_line(exc) from None


def _node_summary(record: Dict[str, Any]) -> str:
    count = record.get("device_count")
    accelerator = record.get("accelerator") or "unknown accelerator"
    return f"{count}× {accelerator}" if count else accelerator


# -- the magics ---------------------------------------------------------------------------
@magics_class
class GaudiMagics(Magics):
    """Train on Intel Gaudi (or CPU/CUDA) from a notebook cell.

    Defaults for every run come from, lowest first: RunSpec's defaults, [tool.gaudi_nb] in the
    nearest pyproject.toml, these traits (%config GaudiMagics.budget_usd = 50), %gaudi_attach,
    the cell's YAML body, then the magic's options.
    """

    target = Unicode(None, allow_none=True, help="where runs start: local or an attached node's name (%gaudi_attach and %gaudi_provision set it)").tag(config=True)
    model = Unicode(None, allow_none=True, help="default model preset, local folder or hub id").tag(config=True)
    dataset = Unicode(None, allow_none=True, help="default dataset").tag(config=True)
    devices = Int(None, allow_none=True, help="default devices (ranks) per node").tag(config=True)
    precision = Unicode(None, allow_none=True, help="default precision: auto, bf16 or fp32").tag(config=True)
    budget_usd = Float(None, allow_none=True, help="default budget: a run stops cleanly when its spend reaches it").tag(config=True)
    price_per_hour = Float(None, allow_none=True, help="default USD per node-hour (overrides the instance type's catalog price)").tag(config=True)
    instance_type = Unicode(None, allow_none=True, help="default instance type from the price catalog").tag(config=True)
    panel = Enum(["auto", "live", "static"], "auto", help="live widgets, static image + text (headless), or auto-detect").tag(config=True)
    update_interval_s = Float(UPDATE_INTERVAL_S, help="seconds between panel updates").tag(config=True)

    SPEC_TRAITS = ("target", "model", "dataset", "devices", "precision", "budget_usd", "price_per_hour", "instance_type")

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self.started: List[api.Run] = []
        self.panels: Dict[str, Any] = {}
        self.last_panel: Any = None

    # -- settings ----------------------------------------------------------
    def defaults(self) -> Dict[str, Any]:
        """The options every run starts from (see the class docstring for the order)."""
        try:
            values = run_defaults()
        except GaudiNbError as exc:
            raise _one_line(exc) from None
        for name in self.SPEC_TRAITS:
            value = getattr(self, name)
            if value is not None:
                values[name] = value
        return {k: v for k, v in values.items() if k in RunSpec.model_fields}

    def _panel_settings(self) -> Tuple[str, float]:
        """The traits, unless still at their defaults and [tool.gaudi_nb] sets them."""
        project = pyproject_defaults()
        mode = str(project.get("panel", "auto")) if self.panel == "auto" else self.panel
        interval = float(project.get("update_interval_s", UPDATE_INTERVAL_S)) if self.update_interval_s == UPDATE_INTERVAL_S else self.update_interval_s
        return mode, interval

    def _show(self, run: api.Run, quiet: bool = False) -> None:
        if quiet:
            return
        from .panel import show

        mode, interval = self._panel_settings()
        panel = show(run, mode=None if mode == "auto" else mode, interval_s=interval)
        if panel is not None:
            old = self.panels.get(run.run_id)
            if old is not None:
                old.close()
            self.panels[run.run_id] = panel
            self.last_panel = panel

    def _run(self, run_id: Optional[str]) -> api.Run:
        try:
            if run_id:
                named = self._named(run_id)  # {run.run_id}, or {run} itself
                return api.get_run(str(getattr(named, "run_id", named)))
            if self.started:
                return self.started[-1]
            recent = api.runs(limit=1)
        except GaudiNbError as exc:
            raise _one_line(exc) from None
        if not recent:
            raise UsageError("no runs yet: start one with %gaudi_train")
        return api.get_run(recent[0]["run_id"])

    # -- %gaudi_attach -------------------------------------------------------
    @line_magic
    @magic_arguments()
    @argument("target", help="local, ssh://user@host[:port] (attaches that node), or an attached node's name")
    @spec_arguments(AttachSpec, skip=("url",))
    def gaudi_attach(self, line: str) -> None:
        """Choose where %gaudi_train starts runs: this machine, or a node attached over SSH (ssh://user@host[:port])."""
        args = parse_argstring(self.gaudi_attach, line)
        over_ssh = args.target.strip().startswith("ssh://")  # AttachSpec checks the address, as gaudi-nb nodes attach does
        parsed = None if over_ssh else parse_target(args.target)
        ssh_options = [f"--{key.replace('_', '-')}" for key in given(args, AttachSpec)]
        if parsed is not None and ssh_options:
            raise UsageError(f"{', '.join(ssh_options)}: only with an ssh://user@host[:port] address")
        if parsed is None:
            record = _attach_node(args)
            self.target = record["name"]
            print(f"attached: {record['name']} ({record['url']}: {_node_summary(record)}); %gaudi_train starts runs there")
            return
        from ..targets import target_for

        if parsed.kind == "node":
            record = _known_node(parsed.text)
            self.target = record["name"]
            print(f"attached: {record['name']} ({record['url']}: {_node_summary(record)}); %gaudi_train starts runs there")
            return
        try:
            target_for(parsed.text)
        except GaudiNbError as exc:
            raise _one_line(exc) from None
        self.target = parsed.text
        print(f"attached: {parsed.text} ({describe_target(parsed)}); %gaudi_train starts runs there")

    # -- %gaudi_train / %%gaudi_train ------------------------------------------
    @line_cell_magic
    @magic_arguments()
    @argument("--script", action="store_true", help="(cell form) the cell body is a Python training script every rank runs in a fresh process; it uses gaudi_nb.worker.script: device(), precision(), report(step=..., loss=...)")
    @argument("--spec-file", dest="spec_file", default=None, help="YAML or JSON file of RunSpec fields; options override it")
    @argument("--quiet", action="store_true", help="start the run without showing its panel")
    @spec_arguments(skip=("script",))  # the magic's own --script flag: the cell body is the script
    def gaudi_train(self, line: str, cell: Optional[str] = None) -> api.Run:
        """Start a training run and show its live panel; returns the Run (run = _).

        Line form: %gaudi_train --model tiny-llama --devices 2 --max-steps 30
        Cell form: the body is YAML of the same options (model: tiny-llama, devices: 2, ...).
        %%gaudi_train --script: the body is a Python training script.
        """
        args = parse_argstring(self.gaudi_train, line)
        try:
            return self._train(args, cell)
        except GaudiNbError as exc:
            raise _one_line(exc) from None

    def _train(self, args: argparse.Namespace, cell: Optional[str]) -> api.Run:
        options = self.defaults()
        if args.spec_file:
            options.update(api.load_spec_file(args.spec_file))
        if args.script:
            if cell is None or not cell.strip():
                raise UsageError("--script takes the training script from the cell body: use %%gaudi_train --script")
            options.update(script=self._save_script(cell))
            options.setdefault("name", "script")
        elif cell is not None and cell.strip():
            # {name} and $name in the body expand from the notebook's variables, as in a line magic
            options.update(parse_mapping(self._expand(cell), "the cell body"))
        options.update({name: getattr(args, name) for name in RunSpec.model_fields if name != "script" and getattr(args, name, None) is not None})
        run = api.train(options)
        self.started.append(run)
        self._show(run, quiet=args.quiet)
        return run

    def _expand(self, text: str) -> str:
        """{name} and $name from the user's namespace (IPython's rules; text that does not expand stays)."""
        if self.shell is None:
            return text
        from IPython.utils.text import DollarFormatter

        try:
            return DollarFormatter().vformat(text, args=[], kwargs=dict(self.shell.user_ns))
        except Exception:
            return text

    def _save_script(self, body: str) -> str:
        from ..paths import home

        folder = home() / "scripts"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"script-{hashlib.sha256(body.encode()).hexdigest()[:12]}.py"
        path.write_text(body)
        return str(path)

    # -- %gaudi_runs ------------------------------------------------------------
    @line_magic
    @magic_arguments()
    @argument("--limit", type=int, default=20, help="how many runs, newest first")
    def gaudi_runs(self, line: str) -> "RunList":
        """Recent runs with status, progress, loss, throughput and cost."""
        args = parse_argstring(self.gaudi_runs, line)
        try:
            return RunList(api.runs(limit=args.limit))
        except GaudiNbError as exc:
            raise _one_line(exc) from None

    # -- %gaudi_watch -------------------------------------------------------------
    @line_magic
    @no_var_expand  # a run id is data: {…} and $name in it are never evaluated
    @magic_arguments()
    @argument("run_id", nargs="?", default=None, help="run id or a unique prefix (default: the latest run)")
    def gaudi_watch(self, line: str) -> api.Run:
        """Show a run's panel: its whole history, then live updates (after a kernel restart too)."""
        args = parse_argstring(self.gaudi_watch, line)
        run = self._run(args.run_id)
        self._show(run)
        return run

    # -- %gaudi_stop ----------------------------------------------------------------
    @line_magic
    @no_var_expand  # a run id is data: {…} and $name in it are never evaluated
    @magic_arguments()
    @argument("run_id", nargs="?", default=None, help="run id or a unique prefix (default: the last run started here)")
    def gaudi_stop(self, line: str) -> None:
        """Ask a run to stop cleanly: the ranks finish two steps and save a checkpoint."""
        args = parse_argstring(self.gaudi_stop, line)
        run = self._run(args.run_id)
        try:
            answer = api.stop(run.run_id, store=run.store)
        except GaudiNbError as exc:
            raise _one_line(exc) from None
        print(answer.line(then="its panel shows when it has stopped"))

    # -- %gaudi_resume ----------------------------------------------------------------
    @line_magic
    @no_var_expand  # a run id is data: {…} and $name in it are never evaluated
    @magic_arguments()
    @argument("run_id", nargs="?", default=None, help="run id or a unique prefix (default: the last run started here)")
    @argument("--max-steps", dest="max_steps", type=int, default=None, help=api.RESUME_OPTIONS["max_steps"])
    @argument("--budget-usd", dest="budget_usd", type=float, default=None, help=api.RESUME_OPTIONS["budget_usd"])
    @argument("--quiet", action="store_true", help="resume the run without showing its panel")
    def gaudi_resume(self, line: str) -> api.Run:
        """Continue a stopped, failed or lost run from its last checkpoint, on the node it ran on, as its
        next attempt, and show its live panel; returns the Run."""
        args = parse_argstring(self.gaudi_resume, line)
        run = self._run(args.run_id)
        try:
            run = api.resume(run.run_id, max_steps=args.max_steps, budget_usd=args.budget_usd)
        except GaudiNbError as exc:
            raise _one_line(exc) from None
        restart = (run.record().get("restarts") or [{}])[-1]
        print(f"resumed {run.run_id} from step {restart.get('from_step')} (attempt {restart.get('attempt')})")
        self.started.append(run)  # %gaudi_stop's default from now on
        self._show(run, quiet=args.quiet)
        return run

    # -- %gaudi_provision ------------------------------------------------------------------
    @line_magic
    @magic_arguments()
    @spec_arguments(ProvisionSpec)
    def gaudi_provision(self, line: str) -> List[Dict[str, Any]]:
        """Create cloud machines as nodes (billed from launch until gaudi-nb nodes down NAME), attach them, and make them the target."""
        from ..nodes.provision import provision

        args = parse_argstring(self.gaudi_provision, line)
        try:
            spec = ProvisionSpec.from_options(**given(args, ProvisionSpec))
            records = provision(**spec.keywords(), progress=print)
        except GaudiNbError as exc:
            raise _one_line(exc) from None
        names = [r["name"] for r in records]
        if not spec.attach:
            print(f"running: {', '.join(names)}; attach them with %gaudi_attach ssh://… --name NAME --identity-file {records[0]['identity_file']}")
        elif len(names) == 1:
            self.target = names[0]
            print(f"attached: {names[0]}; %gaudi_train starts runs there")
        else:
            print(f"attached: {', '.join(names)}; train across them with %gaudi_train --target {','.join(names)} --nodes {len(names)}")
        print(f"billed until: gaudi-nb nodes down {records[0]['group']}")
        return records

    # -- %gaudi_cost ----------------------------------------------------------------------
    def _named(self, text: str) -> Any:
        """`{name}`, `{name.attr}` or `$name`: that notebook variable (or its attribute), looked up, never
        evaluated (the id magics do not expand their line: a run id is data); any other text as it is."""
        named = re.fullmatch(r"\{(\w+(?:\.\w+)*)\}|\$(\w+)", text.strip())
        if not named:
            return text
        first, *attrs = (named.group(1) or named.group(2)).split(".")
        if first not in self.shell.user_ns:
            raise UsageError(f"{text}: no variable {first} in this notebook")
        value = self.shell.user_ns[first]
        for attr in attrs:
            if attr.startswith("_") or not hasattr(value, attr):
                raise UsageError(f"{text}: {first} has no {attr}")
            value = getattr(value, attr)
        return value

    def _number(self, value: Optional[str], flag: str) -> Optional[float]:
        """A number, or a notebook variable named `{name}` or `$name` (looked up, never evaluated: the line is not
        expanded, because a run id in it is data), as notebook 02 plans with `--tokens {tokens}`."""
        if value is None:
            return None
        value = self._named(value)
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UsageError(f"{flag}: a number (7e9) or a notebook variable ({{tokens}}), got {value!r}") from None

    @line_magic
    @no_var_expand  # a run id is data: {…} and $name in it are never evaluated
    @magic_arguments()
    @argument("run_id", nargs="?", default=None, help="a run: its spend, price, $ per 1M tokens and projection")
    @argument("--tokens", default=None, help="training tokens: estimate hours and dollars on every catalog instance ({name} or $name: a notebook variable)")
    @argument("--parameters", default=None, help="model size for the estimate (7e9; {name} or $name: a notebook variable)")
    @argument("--model", default=None, help="a local model preset for the estimate: its size is computed")
    @argument("--mfu", type=float, default=0.35, help="model FLOPs utilization for the estimate (share of peak)")
    def gaudi_cost(self, line: str) -> None:
        """The price catalog, this session's price and budget and the provisioned machines' spend; a run's cost; or pre-run estimates (--tokens)."""
        from IPython.display import HTML, display

        args = parse_argstring(self.gaudi_cost, line)
        args.tokens, args.parameters = (self._number(value, flag) for value, flag in ((args.tokens, "--tokens"), (args.parameters, "--parameters")))
        if args.tokens is not None:
            try:
                display(HTML(estimate_html(args.parameters, args.model, args.tokens, args.mfu)))
            except GaudiNbError as exc:
                raise _one_line(exc) from None
            return
        if args.run_id:
            run = self._run(args.run_id)
            try:
                record = run.record()
            except GaudiNbError as exc:
                raise _one_line(exc) from None
            display(HTML(run_cost_html(record)))
            return
        summary = money_now()
        display(HTML(money_now_html(summary) + catalog_html(self.defaults()) + machines_html(summary)))


def load_ipython_extension(ipython: Any) -> None:
    """%load_ext gaudi_nb: register the magics and make them %config-urable."""
    magics = GaudiMagics(shell=ipython, parent=ipython)
    ipython.register_magics(magics)
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)


__all__ = ["GaudiMagics", "load_ipython_extension", "parse_target", "pyproject_defaults"]
