r"""The SteerLM prompt as a Hugging Face chat template (Jinja), rendering exactly like ``data.template.render_prompt``.

Messages are ``{"role": "system"|"user"|"assistant", "content": str}``; an assistant message may carry
``"label": "helpfulness:4,..."`` (rendered as ``<extra_id_2>{label}\n`` before its content). With
``add_generation_prompt=True`` the template ends with ``<extra_id_1>Assistant\n<extra_id_2>{steer_label}\n``:
``steer_label`` is a template variable (``apply_chat_template(..., steer_label="verbosity:1,...")``); left out, the
model's default steering label is used; ``steer_label=None`` renders no label block. Without a system message the
SteerLM system prompt is used.

The attribute model's template (``readout=True``) renders what the APM was trained on instead: the turns without
their labels, then the ``<extra_id_2>`` read-out whose hidden state the score head reads (as
``data.template.regression_text``); it has no generation prompt.
"""

from __future__ import annotations

import json

from nemo_steerlm.attributes import (
    ASSISTANT_ROLE,
    LABEL_MARKER,
    SYSTEM_MARKER,
    SYSTEM_PROMPT,
    SYSTEM_ROLE,
    TURN_MARKER,
    USER_ROLE,
)

_TEMPLATE = r"""{%- if messages and messages[0]['role'] | lower == 'system' -%}
{%- set system_message = messages[0]['content'] -%}
{%- set turns = messages[1:] -%}
{%- else -%}
{%- set system_message = @DEFAULT_SYSTEM@ -%}
{%- set turns = messages -%}
{%- endif -%}
{{- @SYSTEM_MARKER@ + @SYSTEM_ROLE@ + '\n' + system_message + '\n' -}}
{%- for message in turns -%}
{%- set role = message['role'] | lower -%}
{%- if role == 'user' -%}
{{- @TURN_MARKER@ + @USER_ROLE@ + '\n' + message['content'] + '\n' -}}
{%- elif role == 'assistant' -%}
{{- @TURN_MARKER@ + @ASSISTANT_ROLE@ + '\n' -}}
@TURN_LABEL@
{{- message['content'] + '\n' -}}
{%- else -%}
{{- raise_exception('SteerLM chat template: roles are system (first), user and assistant; got ' + message['role']) -}}
{%- endif -%}
{%- endfor -%}
@ENDING@"""

_TURN_LABEL = r"""{%- if message['label'] is defined and message['label'] is not none -%}
{{- @LABEL_MARKER@ + message['label'] + '\n' -}}
{%- endif -%}"""

_GENERATION_ENDING = r"""{%- if add_generation_prompt -%}
{{- @TURN_MARKER@ + @ASSISTANT_ROLE@ + '\n' -}}
{%- if steer_label is not defined -%}
{{- @LABEL_MARKER@ + @DEFAULT_LABEL@ + '\n' -}}
{%- elif steer_label is not none -%}
{{- @LABEL_MARKER@ + steer_label + '\n' -}}
{%- endif -%}
{%- endif -%}"""

# the attribute model reads the hidden state at the read-out marker that closes its input
_READOUT_ENDING = r"""{{- @LABEL_MARKER@ -}}"""


def steerlm_chat_template(default_label: str, readout: bool = False) -> str:
    """The Jinja chat template of the SteerLM prompt (``readout=False``) or of the attribute model's input.

    Args:
        default_label: the steering label used when ``steer_label`` is not passed (e.g. ``schema.steer_label()``).
        readout: the attribute model's template: turns without labels, ending at ``<extra_id_2>``.

    Returns:
        The template text, for ``tokenizer.chat_template``.
    """
    # json.dumps gives a double-quoted literal with escapes Jinja reads back identically
    values = {
        "DEFAULT_SYSTEM": SYSTEM_PROMPT,
        "SYSTEM_MARKER": SYSTEM_MARKER,
        "SYSTEM_ROLE": SYSTEM_ROLE,
        "TURN_MARKER": TURN_MARKER,
        "USER_ROLE": USER_ROLE,
        "ASSISTANT_ROLE": ASSISTANT_ROLE,
        "LABEL_MARKER": LABEL_MARKER,
        "DEFAULT_LABEL": default_label,
    }
    text = _TEMPLATE.replace("@TURN_LABEL@", "" if readout else _TURN_LABEL)
    text = text.replace("@ENDING@", _READOUT_ENDING if readout else _GENERATION_ENDING)
    for name, value in values.items():
        text = text.replace(f"@{name}@", json.dumps(value, ensure_ascii=False))
    return text
