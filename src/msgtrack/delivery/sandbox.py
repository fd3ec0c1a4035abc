"""The Jinja2 sandbox that renders a delivery, with a cap on size and time per message.

Authors write templates; a template must not be able to take the sending machine down.
Jinja's ``ImmutableSandboxedEnvironment`` already refuses unsafe attributes, mutation
and huge ``range()``s; on top of it a :class:`Budget` per message caps the rendered
size and the time:

- ``*``, ``**``, ``+`` and ``%`` are intercepted and refused *before* computing a result
  that would exceed the size cap (``'x' * 10**10`` never allocates anything);
- ``~`` joins and block buffers (macros, ``{% set %}`` and ``{% filter %}`` blocks)
  check the joined size before joining;
- the string methods and filters that can grow a value (``center``, ``replace``,
  ``format``, ``join``, …) check the size their result would have;
- the output is streamed (``Template.generate``) and counted chunk by chunk;
- the deadline is checked in the sandbox's call, attribute and item hooks, and every
  few items of every ``{% for %}`` loop, so loops producing no output stop too.

A value kept under the cap can still be repeated through a container built in the
source (a literal list of many names joined by a filter): every such path ends in one
of the checks above, but a value may briefly exist at a few times the cap first.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from string import Formatter
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context as TemplateContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Integers beyond this many bits are refused (``2 ** 10**9`` would take the CPU).
MAX_INT_BITS = 1 << 16
# Pure-Python filters that are slow on big inputs refuse inputs beyond this.
SLOW_FILTER_MAX_CHARS = 200_000
# Loops check the deadline every this many items.
LOOP_CHECK_EVERY = 64

PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?")
DIGITS = re.compile(r"\d+")


class RenderLimit(Exception):
    """A template went over its size or time cap; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Budget:
    """Size and time allowed to one message, shared by the environments rendering it."""

    __slots__ = ("max_bytes", "max_seconds", "deadline", "used")

    def __init__(self, max_bytes: int, max_seconds: float) -> None:
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.deadline = float("inf")
        self.used = 0

    def start(self) -> None:
        """A new message: a fresh deadline and nothing spent."""
        self.deadline = time.monotonic() + self.max_seconds
        self.used = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimit(f"rendering took longer than the limit of {self.max_seconds:g} s")

    def allow(self, size: int) -> None:
        """Refuse a value of ``size`` characters (before it is built)."""
        if size > self.max_bytes:
            raise RenderLimit(
                f"a value of about {size} characters is over the message size limit "
                f"of {self.max_bytes} bytes"
            )

    def spend(self, size: int) -> None:
        """Count ``size`` characters of output (and check the time)."""
        self.used += size
        if self.used > self.max_bytes:
            raise RenderLimit(
                f"the rendered message is over the size limit of {self.max_bytes} bytes"
            )
        if time.monotonic() > self.deadline:
            raise RenderLimit(f"rendering took longer than the limit of {self.max_seconds:g} s")


def weight(value: Any, limit: int) -> int:
    """About how many characters ``str(value)`` would take; stops counting past ``limit``."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, list | tuple | set | frozenset | dict):
        total = len(value)
        items: Iterable[Any] = value.items() if isinstance(value, dict) else value
        for item in items:
            total += weight(item, limit) + 2
            if total > limit:
                break
        return total
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3 + 1
    return 8


def _check_percent_format(fmt: str, budget: Budget) -> None:
    """Refuse ``'%999999999d' % x``: widths and precisions are bounded by the cap."""
    if "%" not in fmt:
        return
    for match in PERCENT_SPEC.finditer(fmt):
        for group in match.groups():
            if group == "*":
                raise RenderLimit("'*' widths are not allowed in % formats")
            if group is not None:
                budget.allow(int(group))


def _check_brace_format(fmt: str, budget: Budget) -> None:
    """Refuse ``'{:>999999999}'.format(x)`` and widths taken from the arguments."""
    for _literal, _field, spec, _conversion in Formatter().parse(fmt):
        if not spec:
            continue
        if "{" in spec:
            raise RenderLimit("nested replacement fields are not allowed in format specs")
        for digits in DIGITS.findall(spec):
            budget.allow(int(digits))


def _str_method_result(
    method: Any, args: tuple[Any, ...], kwargs: dict[str, Any], budget: Budget
) -> None:
    """Check the size a growing ``str`` method would produce before it runs."""
    name = method.__name__
    s: str = method.__self__
    if name in ("ljust", "rjust", "center", "zfill") and args and isinstance(args[0], int):
        budget.allow(args[0])
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            budget.allow(len(s) + s.count("\t") * max(size, 0))
    elif (
        name == "replace"
        and len(args) >= 2
        and isinstance(args[0], str)
        and isinstance(args[1], str)
    ):
        count = s.count(args[0]) if args[0] else len(s) + 1
        budget.allow(len(s) + count * max(len(args[1]) - len(args[0]), 0))
    elif name == "join" and args:
        budget.allow(len(s) * weight(args[0], budget.max_bytes) + weight(args[0], budget.max_bytes))


GROWING_STR_METHODS = frozenset(
    {"ljust", "rjust", "center", "zfill", "expandtabs", "replace", "join"}
)


class GuardedCodeGenerator(CodeGenerator):
    """Compiles ``~`` joins and ``{% for %}`` loops with the budget's checks."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802 - Jinja's name
        if frame.eval_ctx.volatile:
            func_name = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            func_name = "markup_join"
        else:
            func_name = "str_join"
        self.write(f"{func_name}(environment.guard_parts((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write(")))")

    def visit_For(self, node: nodes.For, frame: Frame) -> None:  # noqa: N802 - Jinja's name
        original = node.iter
        guard = nodes.EnvironmentAttribute("guard_iter", lineno=original.lineno)
        node.iter = nodes.Call(guard, [original], [], None, None, lineno=original.lineno)
        node.iter.set_environment(self.environment)
        try:
            super().visit_For(node, frame)
        finally:
            node.iter = original


class CappedSandbox(ImmutableSandboxedEnvironment):
    """An immutable sandbox whose templates stay within ``budget``."""

    code_generator_class = GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, budget: Budget, **options: Any) -> None:
        super().__init__(keep_trailing_newline=True, finalize=self._finalize, **options)
        self.budget = budget
        self._direct_calls: set[int] = set()
        # lipsum(n) loops in Python with no hook to stop it; nobody needs it in a newsletter.
        self.globals.pop("lipsum", None)
        self._guard_filters()

    # -- hooks of the sandbox --------------------------------------------------------

    def call_binop(self, context: TemplateContext, operator: str, left: Any, right: Any) -> Any:
        budget = self.budget
        budget.tick()
        if operator == "*":
            _check_repeat(left, right, budget)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "+":
            if isinstance(left, str | bytes | list | tuple) and isinstance(
                right, str | bytes | list | tuple
            ):
                budget.allow(weight(left, budget.max_bytes) + weight(right, budget.max_bytes))
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left, budget)
        return self.binop_table[operator](left, right)

    def add_direct_call(self, helper: Callable[..., Any]) -> None:
        """Let templates call ``helper`` directly, skipping Jinja's context dispatch and
        the checks below: the renderer's own helpers, called once per link. ``helper``
        must stay alive as long as this environment (it is known by its ``id``)."""
        self._direct_calls.add(id(helper))

    def call(__self, __context: TemplateContext, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        budget = __self.budget
        budget.tick()
        if id(__obj) in __self._direct_calls:
            if kwargs:
                kwargs.pop("_loop_vars", None)
                kwargs.pop("_block_vars", None)
            return __obj(*args, **kwargs)
        name = getattr(__obj, "__name__", None)
        if name in GROWING_STR_METHODS and isinstance(getattr(__obj, "__self__", None), str):
            _str_method_result(__obj, args, kwargs, budget)
        elif name in ("format", "format_map"):
            wrapped = getattr(__obj, "__wrapped__", None)
            fmt = getattr(wrapped, "__self__", None)
            if isinstance(fmt, str):
                _check_brace_format(fmt, budget)
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.budget.tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.budget.tick()
        return super().getitem(obj, argument)

    # -- helpers the generated code calls ----------------------------------------------

    def guard_iter(self, iterable: Any) -> Iterator[Any]:
        """Iterate, checking the deadline every few items."""
        budget = self.budget
        for count, item in enumerate(iterable):
            if not count % LOOP_CHECK_EVERY:
                budget.tick()
            yield item

    def guard_parts(self, parts: tuple[Any, ...]) -> tuple[Any, ...]:
        """The operands of ``~``, refused when their join would be over the cap."""
        limit = self.budget.max_bytes
        self.budget.allow(sum(len(p) if isinstance(p, str) else weight(p, limit) for p in parts))
        return parts

    def concat(self, parts: Iterable[str]) -> str:
        """Joins block buffers (macros, set and filter blocks) after checking their size."""
        items = parts if isinstance(parts, list) else list(parts)
        self.budget.allow(sum(map(len, items)))
        return "".join(items)

    def _finalize(self, value: Any) -> Any:
        """Output of ``{{ … }}``: a container is weighed before ``str()`` expands it."""
        if not isinstance(value, str) and isinstance(value, list | tuple | set | frozenset | dict):
            self.budget.allow(weight(value, self.budget.max_bytes))
        return value

    # -- filters that can grow a value ---------------------------------------------------

    def _guard_filters(self) -> None:
        filters = self.filters
        budget = self.budget
        limit = budget.max_bytes

        def guard(name: str, check: Callable[..., Any]) -> None:
            """Wrap filter ``name``: ``check(value, *args, **kwargs)`` runs first and may
            return a replacement for ``value`` (e.g. a generator turned into a list)."""
            original = filters[name]
            pass_arg = getattr(original, "jinja_pass_arg", None)
            skip = 1 if pass_arg is not None else 0

            def guarded(*args: Any, **kwargs: Any) -> Any:
                budget.tick()
                value = check(*args[skip:], **kwargs)
                if value is not None:
                    args = (*args[:skip], value, *args[skip + 1 :])
                return original(*args, **kwargs)

            if pass_arg is not None:
                guarded.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
            filters[name] = guarded

        def sized(value: Any, *_: Any, **__: Any) -> None:
            budget.allow(weight(value, limit))

        def center(value: Any, width: Any = 80) -> None:
            budget.allow(max(weight(value, limit), width if isinstance(width, int) else 0))

        def indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> None:
            text = str(value)
            w = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            budget.allow(len(text) + (text.count("\n") + 1) * max(w, 0))

        def replace(value: Any, old: Any = "", new: Any = "", *_: Any, **__: Any) -> None:
            s, o, n = str(value), str(old), str(new)
            count = s.count(o) if o else len(s) + 1
            budget.allow(len(s) + count * max(len(n) - len(o), 0))

        def format_(value: Any, *args: Any, **kwargs: Any) -> None:
            _check_percent_format(str(value), budget)
            budget.allow(weight(value, limit) + weight(args, limit) + weight(kwargs, limit))

        def join(value: Any, d: Any = "", *_: Any, **__: Any) -> Any:
            items = value if isinstance(value, list | tuple | str) else list(value)
            budget.allow(weight(items, limit) + len(items) * len(str(d)))
            return items

        def slow_input(value: Any, *_: Any, **__: Any) -> None:
            size = weight(value, limit)
            if size > SLOW_FILTER_MAX_CHARS:
                raise RenderLimit(f"input of {size} characters is too long for this filter")

        def sum_(value: Any, attribute: Any = None, start: Any = 0) -> None:
            if not isinstance(start, int | float):
                raise RenderLimit("sum() of non-numbers is not allowed")

        guard("center", center)
        guard("indent", indent)
        guard("replace", replace)
        guard("format", format_)
        guard("join", join)
        guard("tojson", sized)
        guard("pprint", sized)
        guard("string", sized)
        guard("wordwrap", slow_input)
        guard("urlize", slow_input)
        guard("sum", sum_)


def _check_repeat(left: Any, right: Any, budget: Budget) -> None:
    """``seq * n`` or ``n * seq``: the result's size; ``int * int``: its bits."""
    sequence_types = str | bytes | list | tuple
    if isinstance(left, sequence_types) and isinstance(right, int):
        budget.allow(weight(left, budget.max_bytes) * max(right, 0))
    elif isinstance(right, sequence_types) and isinstance(left, int):
        budget.allow(weight(right, budget.max_bytes) * max(left, 0))
    elif isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise RenderLimit("integer result too large")


def _check_power(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        if abs(left).bit_length() * right > MAX_INT_BITS:
            raise RenderLimit("integer result too large")
