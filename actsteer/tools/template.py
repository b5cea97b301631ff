"""A chat template that renders tools the way actsteer does for templates without tool support.

``actsteer serve`` hands vLLM this template (``--chat-template``) for a model like SmolLM2, whose
own template ignores ``tools=``: a Jinja preamble rewrites the conversation into the generic form
of ``actsteer.tools.render.generic`` (the tools block in the system turn, past calls as
``<tool_call>`` text, tool results as user turns in words) and then runs the model's own template
on it. So a server renders exactly the text the in-process engine renders, for any OpenAI client
that sends ``tools``, and vLLM's ``hermes`` tool parser reads the calls back.

The preamble only builds new lists (``ns.out + [...]``): chat templates run in an immutable
sandbox, where ``dict.update`` or ``list.append`` are refused.
"""

from __future__ import annotations

import json

from .formats import GENERIC, generic_block

_BLOCK_HEAD, _BLOCK_TAIL = generic_block(()).split("<tools>\n\n</tools>")
_NO_PARAMS = json.dumps({"type": "object", "properties": {}})

PREAMBLE = """{%- set ns = namespace(out=[], pending=none) -%}
{%- for m in messages -%}
  {%- set content = m.content if m.content is string else '' -%}
  {%- if m.role == 'tool' -%}
    {%- set found = namespace(name=m.name or none) -%}
    {%- if not found.name -%}
      {%- set found.name = 'The tool' -%}
      {%- for p in messages -%}{%- for c in (p.tool_calls or []) -%}
        {%- if c.id and c.id == m.tool_call_id -%}
          {%- set found.name = c.function.name -%}
        {%- endif -%}
      {%- endfor -%}{%- endfor -%}
    {%- endif -%}
    {%- set said = found.name ~ ' returned: ' ~ content -%}
    {%- set ns.pending = said if ns.pending is none else ns.pending ~ '\\n' ~ said -%}
  {%- else -%}
    {%- if ns.pending is not none -%}
      {%- set ns.out = ns.out + [{'role': 'user', 'content': ns.pending}] -%}
      {%- set ns.pending = none -%}
    {%- endif -%}
    {%- if m.role == 'assistant' and m.tool_calls -%}
      {%- set parts = namespace(items=[content] if content else []) -%}
      {%- for c in m.tool_calls -%}
        {%- set args = c.function.arguments if c.function.arguments is mapping else {} -%}
        {%- set parts.items = parts.items + [BEGIN_A ~ c.function.name ~ BEGIN_B
            ~ (args | tojson) ~ END] -%}
      {%- endfor -%}
      {%- set ns.out = ns.out + [{'role': 'assistant', 'content': parts.items | join('\\n')}] -%}
    {%- else -%}
      {%- set ns.out = ns.out + [{'role': m.role, 'content': content}] -%}
    {%- endif -%}
  {%- endif -%}
{%- endfor -%}
{%- if ns.pending is not none -%}
  {%- set ns.out = ns.out + [{'role': 'user', 'content': ns.pending}] -%}
{%- endif -%}
{%- if tools -%}
  {%- set listed = namespace(items=[]) -%}
  {%- for t in tools -%}
    {%- set f = t.function if t.function is defined else t -%}
    {%- set listed.items = listed.items + ['{"type": "function", "function": {"name": '
        ~ (f.name | tojson) ~ ', "description": ' ~ ((f.description or '') | tojson)
        ~ ', "parameters": ' ~ ((f.parameters | tojson) if f.parameters else NO_PARAMS)
        ~ '}}'] -%}
  {%- endfor -%}
  {%- set block = BLOCK_HEAD ~ '<tools>\\n' ~ (listed.items | join('\\n')) ~ '\\n</tools>'
      ~ BLOCK_TAIL -%}
  {%- if ns.out and ns.out[0].role == 'system' -%}
    {%- set ns.out = [{'role': 'system', 'content': (ns.out[0].content ~ '\\n\\n' ~ block)
        | trim}] + ns.out[1:] -%}
  {%- else -%}
    {%- set ns.out = [{'role': 'system', 'content': block}] + ns.out -%}
  {%- endif -%}
{%- endif -%}
{%- set messages = ns.out -%}
{%- set tools = none -%}
"""


def _literal(text: str) -> str:
    """``text`` as a Jinja string literal."""
    return json.dumps(text)


def generic_template(template: str) -> str:
    """The model's own chat ``template`` behind the preamble that writes tool chats in the
    generic form (see the module docstring)."""
    begin_a, begin_b = GENERIC.begin.split("{name}")
    values = {
        "BEGIN_A": begin_a,
        "BEGIN_B": begin_b,
        "END": GENERIC.end,
        "NO_PARAMS": _NO_PARAMS,
        "BLOCK_HEAD": _BLOCK_HEAD,
        "BLOCK_TAIL": _BLOCK_TAIL,
    }
    preamble = PREAMBLE
    for name, value in values.items():
        preamble = preamble.replace(name, _literal(value))
    return preamble + template
