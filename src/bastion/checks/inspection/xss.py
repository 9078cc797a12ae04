"""Cross-site scripting (``xss``).

Approach: script runs in a page only through a few doors — an element that loads or runs code
(``<script>``, ``<iframe>``, ``<svg>``, ``<object>``…), an event-handler attribute (``onload=``), a
script URL (``javascript:``), CSS that calls out (``url(javascript:``, ``expression(``), or a value
that lands inside existing script and calls a sink (``alert(``, ``document.cookie``,
``self["alert"]``, tagged templates). Each rule looks for one door. They read the ``html`` view:
entities decoded (``&lt;``, ``&#60``, ``&tab;``), JavaScript comments dropped, control characters
and whitespace collapsed. Element and scheme names are matched with optional whitespace between
their letters (``<s c r i p t``, ``java&#10;script:``).

Harmless markup (``<b>``, ``<br>``, ``<a href="https://…">``, ``<3``) does not match at paranoia 1.
"""

from __future__ import annotations

from ._rules import Rule

__all__ = ["RULES", "SCREEN_WORDS"]


def _spaced(word: str) -> str:
    # "<s c r i p t", "<f/o/r/m", "<s%00cript" (a NUL or a control character: collapsed to a space)
    return r"[^\w<>'\"]{0,2}".join(word)


_TAGS = "|".join(
    _spaced(t)
    for t in (
        "script", "iframe", "frameset", "frame", "object", "embed", "applet", "form", "svg", "math",
        "style", "isindex", "vmlframe", "import", "noscript", "xss", "marquee", "template", "xmp",
        "plaintext", "bgsound", "layer", "ilayer", "portal", "body", "image", "video", "audio", "bindings",
        "animate", "param", "set",
    )
)  # fmt: skip
_SCHEMES = "|".join(_spaced(s) for s in ("javascript", "vbscript", "livescript", "ecmascript"))
# English words beginning with "on" that can be followed by "=" in ordinary key=value text.
_NOT_HANDLERS = r"(?!(?:ly|line|going|ion|ions|set|to|ward|wards|es|ce|board|boarding|site|screen|call|e)\b)"

RULES: tuple[Rule, ...] = (
    Rule("xss.tag", 1, "html", rf"<\s?[?!]?\s?(?:[a-z][\w-]*\s?:\s?)?(?:{_TAGS})(?![\w-])", ('<',)),
    Rule("xss.tag", 1, "html", r"<\s?\??\s?import\s?implementation", ('<',)),
    Rule("xss.tag", 1, "html",
         r"<\s?(?:link|meta|base)\b[^<>]{0,300}?\b(?:href|http-equiv|src|charset|content)\b", ('<',)),
    Rule("xss.tag", 1, "html", r"<!--\s?#\s?(?:exec|include|echo)|<!\s?entity\b|<!\s?doctype[^<>]{0,300}\[",
         ('<!',)),
    Rule("xss.tag", 1, "html",
         r"<[^<>]{0,300}?\b(?:xmlns(?::\w+)?\s?=|xi:include\b|xsi:schemalocation\b|xlink:href\b)",
         ("xmlns", "xi", "xsi", "xlink")),
    Rule("xss.handler", 1, "html", r"<[a-z][^<>]{0,300}?[\s/\"'`]on[a-z]{3,50}\s?=", ("<",), ("=",)),
    Rule("xss.handler", 1, "html", rf"[\s\"'`;(]on{_NOT_HANDLERS}[a-z]{{3,50}}\s?=", ("=",)),
    # after "/", "=", "," or a digit (as in tokens and base64: ".../onafe="), a value must follow
    Rule("xss.handler", 1, "html", rf"[/=,\d]on{_NOT_HANDLERS}[a-z]{{3,50}}\s?=(?!=|$)", ("=",)),
    Rule("xss.handler", 1, "html", rf"^on{_NOT_HANDLERS}[a-z]{{3,50}}\s?=", ("=",)),
    Rule("xss.handler", 1, "html", r"<[a-z][^<>]{0,300}?\bsrcdoc\s?=", ('srcdoc',)),
    Rule("xss.handler", 1, "html",
         r"\b(?:formaction|xlink:href)\s?=|<[^<>]{0,200}vmlframe[^<>]{0,200}src\s?=|<!\s?entity\s[^>]{0,200}\bsystem\b",
         ("formaction", "xlink", "vmlframe", "entity")),
    Rule("xss.script_url", 1, "html",
         rf"(?:{_SCHEMES})\s?:(?![ ]?[a-z]+(?: [a-z]+){{2}}[^(=`\[;]{0,200}$)", (':',)),
    Rule("xss.script_url", 1, "html",
         r"\bdata\s?:\s?(?:text/html|image/svg\+xml|application/(?:x-)?(?:java|ecma)script|"
         r"text/(?:java|ecma)script)|\b(?:src|href|data|action|formaction)\s?=\s?['\"]?\s?data:|"
         r"\bdata\s?:\s?(?:,|(?!(?:image|audio|video|font)/)[a-z]+/[\w.+-]+\s?(?:;[\w=.-]{1,40}\s?){0,3}[;,])",
         ('data',)),
    Rule("xss.css", 1, "html",
         rf"\burl\s?\(\s?['\"]?\s?(?:{_SCHEMES})|-moz-binding|:\s?expression\s?\(|\bbehavior\s?:\s?url|"
         r"@\s?i\s?m\s?p\s?o\s?r\s?t\s?['\"(]", ("url", "moz", "expression", "behavior", "@")),
    Rule("xss.dom", 1, "html",
         r"\b(?:document|window|top|parent|frames|globalthis|opener)\s?\.\s?(?:cookie|domain|location|write|"
         r"writeln|localstorage|sessionstorage|createelement|queryselector|queryselectorall|getelementbyid|"
         r"getelementsbytagname|execcommand|referrer|documenturi|body\.innerhtml)\b|"
         r"\blocation\s?\.\s?(?:href|hash|search|replace|assign)\s?[=(]|\.innerhtml\s?=|\.outerhtml\s?=",
         ("document", "window", "top", "parent", "frames", "globalthis", "opener", "location", "innerhtml",
          "outerhtml")),
    # alert(1), prompt`1`: the name starts the pattern (no word character, "." or "$" before
    # its first letter), so the engine skips ahead to candidate letters
    Rule("xss.js_call", 1, "html", r"(?:a(?<![\w$]a)lert|p(?<![\w$]p)rompt|c(?<![\w$]c)onfirm)\s?\+?\s?[(`]",
         ("alert", "prompt", "confirm"), ("(", "`")),
    Rule("xss.js_call", 1, "html",
         r"(?<![\w$])(?:eval|atob|settimeout|setinterval|execscript|msgbox|importscripts)\s?\+?\s?\(|"
         r"\.fromcharcode\s?\(|\bnew\s+function\s?\(",
         ("eval", "atob", "settimeout", "setinterval", "execscript", "msgbox", "importscripts",
          "fromcharcode", "function"), ("(",)),
    Rule("xss.js_call", 1, "html", r"\bconstructor\s?\.\s?constructor|\.constructor\s?\(\s?['\"]",
         ("constructor",)),
    Rule("xss.js_call", 1, "html",
         r"\b(?:self|top|window|parent|this|globalthis|frames|document)\s?\[\s?['\"`\\]",
         ("self", "top", "window", "parent", "this", "globalthis", "frames", "document"), ("[",)),
    Rule("xss.js_call", 1, "html",
         r"\b(?:self|top|window|parent|this|globalthis|frames|document)\)?\[(?!\d+\])[^\]\s]{1,200}\]",
         ("self", "top", "window", "parent", "this", "globalthis", "frames", "document"), ("[",)),
    Rule("xss.js_call", 1, "html", r"\.\s?(?:call|apply|bind)\s?`", ("call", "apply", "bind"), ("`",)),
    Rule("xss.js_call", 1, "html", r"\$\{\s?(?:alert|eval|prompt|confirm|atob)\b", ("${",)),
    Rule("xss.jsfuck", 1, "html", r"[(\[+!]\s?!\s?\[\s?\]|\[\s?\]\s?\[\s?[(!\[]", ("[]", "[ ]")),
    Rule("xss.utf7", 1, "lower", r"\+ad[w4]-", ('+ad',)),
    # "<" and ">" with their high bit set (U+00BC, U+00BE in US-ASCII decoders), written as escapes:
    # a closing tag \xbc/script\xbe
    Rule("xss.tag", 1, "lower", r"\\xbc\s?/\s?[a-z][\w-]{0,30}(?:\\x[0-9a-f]{2})?\s?(?:\\xbe|>)", ("\\xbc",)),
    # "<" written as a JavaScript or CSS escape in front of a tag that runs code: \u003cscript, \x3csvg
    Rule("xss.tag", 1, "lower",
         rf"\\(?:u00|x|0{{0,4}})3c\s?/?\s?(?:{_TAGS}|img|body|a|image|video|audio|input)(?![\w-])",
         ("\\u00", "\\x", "\\3c", "\\03c", "\\003c", "\\0003c")),
    # --- paranoia 2 ---------------------------------------------------------------------------
    Rule("xss.template", 2, "html",
         r"\{\{(?!\{)[^{}]{0,200}?(?:constructor|__proto__|\$eval|\$on\b|\$window|alert\s?\(|\)\s?\(\))",
         ("{{",)),
    Rule("xss.comment", 2, "html", r"-->|<!--", ('-->', '<!--')),
    Rule("xss.escape", 2, "lower", r"(?:\\u00[0-9a-f]{2}){2,}|(?:\\x[0-9a-f]{2}){2,}", ('\\u00', '\\x')),
    Rule("xss.tag", 2, "html", r"<\s?/?\s?(?:img|image|video|audio|source|input|button|body|details|select|"
                               r"textarea|keygen|animate|set|a)\b[^<>]{0,300}?(?:src|href|action|style)\s?=",
         ('<',)),
    Rule("xss.tag", 2, "html", r"<\s?(?:[a-z][\w-]*:)?[a-z][\w-]{0,30}[^<>]{0,300}>[^<]{0,300}<\s?/", ('<',)),
)  # fmt: skip

# Words without which no rule of this family can match (see ``Inspector``'s screen).
_SCREEN_TEXT = (
    "javascript vbscript livescript ecmascript document window top parent frames globalthis "
    "opener location self this expression behavior constructor srcdoc xmlns xsi xlink xi url innerhtml "
    "outerhtml"
)
SCREEN_WORDS: frozenset[str] = frozenset(_SCREEN_TEXT.split())
