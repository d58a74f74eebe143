"""The `saguaro` command line: generate, chat, serve and bench on top of the Python API.

User mistakes print one `saguaro: error: ...` line and exit with status 2; Ctrl-C exits with 130
and SIGTERM with 143, after the model (and SSD's draft worker) shut down, with no traceback.
Prompts must be valid UTF-8: an argument or chat line with undecodable bytes is refused (status
2; in chat, the line is refused and the session goes on), never silently altered.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import re
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

# No torch at import time: `--help` stays instant, and main() imports it with Ctrl-C held back
# (_import_runtime), then exits 130 without a traceback.
from saguaro.cli.cache import add_cache_parser, cmd_cache
from saguaro.errors import SaguaroError
from saguaro.loading.bundled import DEFAULT_DRAFT, DEFAULT_TARGET

if TYPE_CHECKING:
    from saguaro.sampling.params import SamplingParams

log = logging.getLogger(__name__)

DEFAULT_MODE = "ssd"  # for the bundled pair, or any target given with a --draft
MODES = ("ar", "sd", "ssd")
USAGE_ERROR = 2
INTERRUPTED = 130
TERMINATED = 143

# Flags forwarded to LLM only when given, so the CLI works with engines that predate them.
OPTIONAL_LLM_FLAGS = {
    "target_cores": "--target-cores",
    "draft_cores": "--draft-cores",
    "draft_device": "--draft-device",
    "fanout": "--fanout",
    "saguaro_c": "--saguaro-c",
    "backup": "--backup",
    "draft_head_tokens": "--draft-head-tokens",
    "ssd_worker": "--ssd-worker",
    "quantize_target": "--quantize-target",
    "quantize_draft": "--quantize-draft",
    "static_shapes": "--static-shapes",
}
QUANTIZE_CHOICES = ("auto", "none", "int8", "int4")


class UsageError(SaguaroError):
    """A command-line mistake found by argparse or by the CLI itself."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs; main() exits 143 on it."""


class _Parser(argparse.ArgumentParser):
    # argparse would print the usage block and exit; we want one error line from main().
    def error(self, message: str):
        raise UsageError(message)


def _core_list(text: str) -> list[int]:
    try:
        cores = [int(part) for part in text.split(",")]
    except ValueError:
        cores = []
    if not cores or any(c < 0 for c in cores):
        raise argparse.ArgumentTypeError(f"expected core numbers like 0 or 0,1, got {text!r}")
    return cores


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--target", help="model: bundled name, .gguf file, HF folder, hub id or random:<shape> "
                   f"(default {DEFAULT_TARGET})")
    g.add_argument("--draft", help=f"draft model or 'ngram' for sd/ssd (default {DEFAULT_DRAFT} with the bundled target)")
    g.add_argument("--mode", choices=MODES, default=None,
                   help=f"decoding strategy (default {DEFAULT_MODE} with a draft or the bundled pair, else ar)")
    g.add_argument("--k", type=int, help="speculation lookahead (tokens drafted per round)")
    g.add_argument("--dtype", help="auto (default: bfloat16 on CPU), float32 (the reference path), bfloat16, "
                   "or float16 (CUDA only)")
    g.add_argument("--quantize-target", choices=QUANTIZE_CHOICES,
                   help="the target's weights on CPU: auto (default: a GGUF at about its own precision, "
                   "int4 for Q4_K_M; float checkpoints and float32 as they are), none, int8 or int4")
    g.add_argument("--quantize-draft", choices=QUANTIZE_CHOICES, help="the draft's weights, as --quantize-target")
    g.add_argument("--device", help="cpu (default) or cuda[:N]")
    g.add_argument("--threads", type=int, help="torch CPU threads")
    g.add_argument("--static-shapes", action=argparse.BooleanOptionalAction, default=None,
                   help="capture-ready forwards: bucketed batch and width, attention over the whole KV pool "
                   "(default: on CUDA only)")
    s = p.add_argument_group("SSD placement and knobs")
    s.add_argument("--target-cores", type=_core_list, metavar="LIST", help="CPU cores for the target, e.g. 0 or 0,1")
    s.add_argument("--draft-cores", type=_core_list, metavar="LIST", help="CPU cores for the draft, e.g. 1")
    s.add_argument("--draft-device", help="device of the draft model")
    s.add_argument("--fanout", help="fan-out allocation across speculation positions")
    s.add_argument("--saguaro-c", type=float, metavar="C",
                   help="Saguaro sampling factor in (0, 1]: below 1 trades acceptance for cache hits")
    s.add_argument("--draft-head-tokens", type=int, metavar="N",
                   help="the draft's LM head keeps only the N most frequent tokens (cheaper drafting, still exact; "
                        "default 32768 on CPU, all elsewhere; 0 keeps all)")
    s.add_argument("--backup", help="backup speculator used on a speculation-cache miss")
    s.add_argument("--ssd-worker", choices=("auto", "process", "thread"),
                   help="the draft worker as its own process, or a thread on its own CUDA stream "
                   "(auto: a thread when target and draft share one GPU)")


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, help="tokens to generate per prompt (default 128)")
    g.add_argument("--temperature", type=float, help="0 = greedy (default 1.0)")
    g.add_argument("--top-k", type=int, help="keep the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]")
    g.add_argument("--seed", type=int, help="seed for reproducible sampling")
    g.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true", default=None, help="keep generating past end-of-sequence")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="saguaro", description="LLM inference with exact speculative speculative decoding.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO) on stderr")
    sub = parser.add_subparsers(dest="command", metavar="{generate,chat,serve,bench,cache}", required=True)

    # -v is also accepted after the subcommand; SUPPRESS keeps the subparser from resetting it.
    verbose = _Parser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    gen = sub.add_parser("generate", parents=[verbose], help="complete one or more prompts (decoded as one batch)")
    gen.add_argument("prompts", nargs="+", metavar="PROMPT")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the chat template")
    gen.add_argument("--json", action="store_true", help="print one JSON object per prompt per line")
    _add_model_options(gen)
    _add_sampling_options(gen)

    chat = sub.add_parser("chat", parents=[verbose], help="interactive chat on stdin (/help lists its commands)")
    _add_model_options(chat)
    _add_sampling_options(chat)

    from saguaro.server.cli import add_serve_options  # argparse only: FastAPI loads when serving

    serve = sub.add_parser("serve", parents=[verbose], help="OpenAI-compatible HTTP server (see saguaro serve --help)")
    _add_model_options(serve)
    add_serve_options(serve)

    # The benchmark parses its own arguments; everything after `bench` is passed through.
    sub.add_parser("bench", help="run benchmarks (see saguaro bench --help)", add_help=False)
    add_cache_parser(sub, [verbose])
    return parser


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """Only the flags the user gave; SamplingParams validates them and supplies the defaults."""
    from saguaro.sampling.params import SamplingParams

    given = {
        name: getattr(args, name)
        for name in ("max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "ignore_eos")
        if getattr(args, name) is not None
    }
    return SamplingParams(**given)


def model_options(args: argparse.Namespace) -> tuple[str, dict]:
    """The target and the LLM / Engine options the model and mode flags ask for."""
    target, draft = args.target, args.draft
    if args.mode is None:
        args.mode = DEFAULT_MODE if (target is None or draft is not None) else "ar"
        if args.mode == "ssd" and draft == "ngram":
            args.mode = "sd"
    if target is None:
        target = DEFAULT_TARGET
        if draft is None and args.mode != "ar":
            draft = DEFAULT_DRAFT
    kwargs = {"draft": draft, "mode": args.mode, "k": args.k}
    for name in ("dtype", "device", "threads"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    from saguaro.llm import LLM

    accepted = inspect.signature(LLM).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        from saguaro.engine.build import build_parts

        accepted = inspect.signature(build_parts).parameters  # what LLM forwards its options to
    for name, flag in OPTIONAL_LLM_FLAGS.items():
        if getattr(args, name) is None:
            continue
        if name not in accepted:
            raise UsageError(f"{flag} is not supported by this version of the engine")
        kwargs[name] = getattr(args, name)
    return target, kwargs


def open_llm(args: argparse.Namespace):
    from saguaro.llm import LLM

    target, kwargs = model_options(args)
    log.info("loading %s (mode %s, draft %s)", target, args.mode, kwargs["draft"])
    return LLM(target, **kwargs)


def summary(results) -> str:
    """One line over the whole batch: tokens/s, plus acceptance and SSD hit rate when present."""
    metrics = [r.metrics.to_dict() for r in results]
    tokens = sum(m["decode_tokens"] for m in metrics)
    # The batch decodes together, so its wall time is the longest sequence's decode time.
    seconds = max(m["decode_s"] for m in metrics)
    parts = [f"{tokens} tokens", f"{tokens / seconds if seconds > 0 else 0.0:.1f} tokens/s", f"mode {metrics[0]['mode']}"]
    note = _fallback_note(results)
    if note:
        parts.append(note)
    drafted = sum(m.get("drafted", 0) for m in metrics)
    if drafted:
        parts.append(f"acceptance {sum(m.get('accepted', 0) for m in metrics) / drafted:.1%}")
    hits = [m["hit_rate"] for m in metrics if m.get("hit_rate") is not None]
    if hits:
        parts.append(f"hit rate {sum(hits) / len(hits):.1%}")
    return ", ".join(parts)


def cmd_generate(args: argparse.Namespace, llm) -> int:
    params = args.params
    prompts = list(args.prompts)
    if args.chat:
        prompts = [llm.chat_prompt([{"role": "user", "content": p}]) for p in prompts]
    results = llm.generate(prompts, params)
    if args.json:
        for r in results:
            print(json.dumps(r.to_dict(), ensure_ascii=False))
        return 0
    for i, r in enumerate(results):
        if i:
            print()
        print(r.text)
    sys.stdout.flush()
    print(summary(results), file=sys.stderr)
    return 0


def _fallback_note(results) -> str | None:
    """Why SSD fell back to AR, if it did: the summary says so rather than still claiming SSD."""
    for r in results:
        fault = r.metrics.extra.get("worker_fault")
        if fault:
            return f"the draft worker failed ({fault}); decoded autoregressively"
    return None


def _read_line(interactive: bool) -> str | None:
    if interactive:
        sys.stdout.write("> ")
        sys.stdout.flush()
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n")


CHAT_HELP = ("commands: /reset clears the history, /exit or /quit leaves (so does Ctrl-D), /help shows this. "
             "Ctrl-C stops an answer; at the prompt, a second Ctrl-C leaves.")
CHAT_COMMAND = re.compile(r"/[A-Za-z]+")


def _chat_command(text: str, history: list[dict]) -> bool | None:
    """Runs a /command: True to leave, False to go on; None when `text` is a message."""
    if not CHAT_COMMAND.fullmatch(text):
        return None  # e.g. "/usr/bin is ..." is a message
    command = text.lower()
    if command in ("/exit", "/quit"):
        return True
    if command == "/reset":
        history.clear()
        print("(history cleared)", file=sys.stderr)
    elif command == "/help":
        print(CHAT_HELP, file=sys.stderr)
    else:
        print(f"unknown command {text}; {CHAT_HELP}", file=sys.stderr)
    return False


def cmd_chat(args: argparse.Namespace, llm) -> int:
    from saguaro.tokenizer import check_text

    params = args.params
    interactive = sys.stdin.isatty()
    if hasattr(sys.stdin, "reconfigure"):
        # Undecodable bytes reach check_text (a clear refusal) instead of ending the session.
        sys.stdin.reconfigure(errors="surrogateescape")
    history: list[dict] = []
    interrupts = 0  # Ctrl-C at the prompt in a row
    while True:
        try:
            line = _read_line(interactive)
        except KeyboardInterrupt as e:
            if isinstance(e, Terminated) or interrupts:
                raise
            interrupts += 1
            print("\n(Ctrl-C again or /exit to leave)", file=sys.stderr)
            continue
        if line is None:
            return 0
        text = line.strip()
        if not text:
            continue
        interrupts = 0
        leave = _chat_command(text, history)
        if leave is not None:
            if leave:
                return 0
            continue
        try:
            check_text(text, "the message")
        except SaguaroError as e:
            print(f"saguaro: error: {_one_line(e)}", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        start = time.perf_counter()
        pieces = []
        try:
            for piece in llm.stream(llm.chat_prompt(history), params):
                pieces.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except SaguaroError as e:
            # Typically the history outgrew the context; the session stays usable after /reset.
            history.pop()
            print(f"saguaro: error: {_one_line(e)} (type /reset to start over)", file=sys.stderr)
            continue
        except KeyboardInterrupt as e:
            if isinstance(e, Terminated):
                raise
            # The answer stops (the engine aborted it); the unanswered message leaves the history.
            history.pop()
            print("\n(answer stopped)", file=sys.stderr)
            continue
        seconds = time.perf_counter() - start
        answer = "".join(pieces)
        print()
        history.append({"role": "assistant", "content": answer})
        # stream() yields text, not tokens; re-encoding the answer gives the token count.
        tokens = len(llm.tokenizer.encode(answer, add_special_tokens=False)) if answer else 0
        print(f"[{tokens} tokens, {tokens / seconds if seconds > 0 else 0.0:.1f} tokens/s]", file=sys.stderr)
    return 0


def cmd_bench(argv: list[str]) -> int:
    try:
        from saguaro.bench.main import main as bench_main
    except ModuleNotFoundError as e:
        if e.name not in ("saguaro.bench", "saguaro.bench.main"):
            raise
        print("saguaro: error: the benchmark module (saguaro.bench.main) is not available in this install",
              file=sys.stderr)
        return USAGE_ERROR
    code = bench_main(argv)
    return 0 if code is None else int(code)


def _one_line(error: BaseException) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def _run(argv: list[str]) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    if args.command == "bench":
        return cmd_bench(extra)
    if extra:
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "cache":
        return cmd_cache(args)
    _import_runtime()
    if args.command == "serve":
        from saguaro.server.cli import cmd_serve

        return cmd_serve(args, *model_options(args))
    # Check the sampling flags and prompts before spending seconds on loading a model.
    args.params = sampling_params(args)
    if args.command == "generate":
        from saguaro.tokenizer import check_text

        for prompt in args.prompts:
            check_text(prompt, "a prompt")
    llm = None
    old_term = _on_sigterm()  # not for serve: the server handles its own signals
    try:
        llm = open_llm(args)
        return cmd_generate(args, llm) if args.command == "generate" else cmd_chat(args, llm)
    finally:
        try:
            if llm is not None:
                llm.close()
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    old_level = root.level
    # Installed only while main() runs, so in-process callers (tests) keep their logging setup.
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        return _run(argv)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except SaguaroError as e:
        print(f"saguaro: error: {_one_line(e)}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt as e:  # the finally of _run has closed the model by now
        print(file=sys.stderr)
        return TERMINATED if isinstance(e, Terminated) else INTERRUPTED
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _import_runtime(load=lambda: importlib.import_module("saguaro.llm")) -> None:
    """Import torch and the engine (`load`) with Ctrl-C held until they finish.

    A KeyboardInterrupt raised inside torch's import leaves torch and numpy half imported, and
    what happens next depends on where it landed: an ImportError ("cannot load module more than
    once per process", exit 1), the interrupt swallowed so generation runs on, or death by the
    signal. Held back, a Ctrl-C during the imports becomes one KeyboardInterrupt right after them.
    """
    if threading.current_thread() is not threading.main_thread():
        load()
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        load()
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def _on_sigterm():
    """Make SIGTERM unwind like Ctrl-C (so the draft worker is shut down, not orphaned); returns
    the previous handler, or None where handlers cannot be set (not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, terminate)

