"""The console's templates and stylesheet, kept in Python so they ship with the package as they are.

Jinja2 with autoescaping on for every template: every value from the store or the request is escaped. No
template contains a script, an inline style or an event handler attribute: the Content-Security-Policy
(``default-src 'none'``) would block them anyway.
"""

from __future__ import annotations

from jinja2 import DictLoader, Environment, StrictUndefined

__all__ = ["CSS", "environment"]

CSS = """
body { font-family: system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { background: #1d2330; color: #fff; padding: .75rem 1.5rem; display: flex; align-items: center; }
header h1 { font-size: 1.1rem; margin: 0; flex: 1; }
header form { margin: 0; }
main { max-width: 64rem; margin: 2rem auto; padding: 0 1.5rem; }
.card { background: #fff; border: 1px solid #d8dce3; border-radius: 6px; padding: 1.5rem; }
.narrow { max-width: 24rem; margin: 0 auto; }
label { display: block; margin: .75rem 0 .25rem; font-weight: 600; }
input[type=email], input[type=password], input[type=text] { width: 100%; padding: .5rem;
  box-sizing: border-box; border: 1px solid #b8bfcc; border-radius: 4px; font-size: 1rem; }
button { margin-top: 1rem; padding: .5rem 1rem; border: 0; border-radius: 4px; background: #2f5bd3;
  color: #fff; font-size: 1rem; cursor: pointer; }
button.danger { background: #b3261e; margin: 0; padding: .25rem .6rem; font-size: .85rem; }
button.quiet { background: transparent; border: 1px solid #fff; margin: 0; }
.error { color: #b3261e; font-weight: 600; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .5rem; border-bottom: 1px solid #e3e6eb; font-size: .9rem; }
code { font-family: ui-monospace, monospace; }
.codes { columns: 2; font-size: 1.1rem; }
.qr svg { width: 12rem; height: 12rem; }
.muted { color: #5b6475; }
"""

_BASE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{% block title %}Bastion{% endblock %} · Bastion console</title>
<link rel="stylesheet" href="/console/static/console.css">
</head>
<body>
<header>
  <h1>Bastion console</h1>
  {% if who %}
  <span class="muted">{{ who.name }} ({{ who.role }})&nbsp;</span>
  <form method="post" action="/console/sign-out">
    <input type="hidden" name="csrf_token" value="{{ csrf_token }}">
    <button class="quiet" type="submit">Sign out</button>
  </form>
  {% endif %}
</header>
<main>
{% block main %}{% endblock %}
</main>
</body>
</html>
"""

_SIGN_IN = """{% extends "base.html" %}
{% block title %}Sign in{% endblock %}
{% block main %}
<div class="card narrow">
  <h2>Sign in</h2>
  {% if error %}<p class="error">{{ error }}</p>{% endif %}
  <form method="post" action="/console/sign-in">
    <input type="hidden" name="csrf_token" value="{{ csrf_token }}">
    <label for="email">Email address</label>
    <input id="email" name="email" type="email" autocomplete="username" required value="{{ email }}">
    <label for="password">Password</label>
    <input id="password" name="password" type="password" autocomplete="current-password" required>
    <button type="submit">Sign in</button>
  </form>
</div>
{% endblock %}
"""

_MFA = """{% extends "base.html" %}
{% block title %}Second factor{% endblock %}
{% block main %}
<div class="card narrow">
  <h2>Second factor</h2>
  {% if error %}<p class="error">{{ error }}</p>{% endif %}
  <form method="post" action="/console/mfa">
    <input type="hidden" name="csrf_token" value="{{ csrf_token }}">
    <label for="code">Code from your authenticator app, or a recovery code</label>
    <input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" required>
    <button type="submit">Continue</button>
  </form>
</div>
{% endblock %}
"""

_ENROL = """{% extends "base.html" %}
{% block title %}Set up MFA{% endblock %}
{% block main %}
<div class="card narrow">
  <h2>Set up two-factor authentication</h2>
  <p>Scan this code with an authenticator app, then type the code it shows.</p>
  <div class="qr">{{ qr_svg | safe }}</div>
  <p class="muted">Or enter this address in the app: <code>{{ otpauth_uri }}</code></p>
  {% if error %}<p class="error">{{ error }}</p>{% endif %}
  <form method="post" action="/console/enrol">
    <input type="hidden" name="csrf_token" value="{{ csrf_token }}">
    <label for="code">Code</label>
    <input id="code" name="code" type="text" inputmode="numeric" autocomplete="one-time-code" required>
    <button type="submit">Confirm</button>
  </form>
</div>
{% endblock %}
"""

_RECOVERY = """{% extends "base.html" %}
{% block title %}Recovery codes{% endblock %}
{% block main %}
<div class="card narrow">
  <h2>Recovery codes</h2>
  <p>Each works once, in place of a code from your app. Keep them somewhere safe: this is the only time
  they are shown.</p>
  <ul class="codes">{% for code in codes %}<li><code>{{ code }}</code></li>{% endfor %}</ul>
  <p><a href="/console/keys">Continue to the console</a></p>
</div>
{% endblock %}
"""

_KEYS = """{% extends "base.html" %}
{% block title %}API keys{% endblock %}
{% block main %}
<h2>API keys</h2>
{% if message %}<p>{{ message }}</p>{% endif %}
{% if keys %}
<table>
  <thead><tr><th>id</th><th>consumer</th><th>name</th><th>scopes</th><th>expires</th><th>last used</th>
  <th>status</th>{% if can_revoke %}<th></th>{% endif %}</tr></thead>
  <tbody>
  {% for key in keys %}
  <tr>
    <td><code>{{ key.id }}</code></td>
    <td>{{ key.consumer }}</td>
    <td>{{ key.name }}</td>
    <td>{{ key.scopes | join(" ") }}</td>
    <td>{{ key.expires_at | when }}</td>
    <td>{{ key.last_used_at | when }}</td>
    <td>{% if key.revoked_at %}revoked{% elif key.rotated_to %}rotated{% else %}active{% endif %}</td>
    {% if can_revoke %}<td>{% if not key.revoked_at %}
      <form method="post" action="/console/keys/{{ key.id | urlencode }}/revoke">
        <input type="hidden" name="csrf_token" value="{{ csrf_token }}">
        <button class="danger" type="submit">Revoke</button>
      </form>{% endif %}</td>{% endif %}
  </tr>
  {% endfor %}
  </tbody>
</table>
{% else %}
<p class="muted">No keys yet.</p>
{% endif %}
{% endblock %}
"""


def _when(value: float | None) -> str:
    if value is None:
        return ""
    import datetime as dt

    return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def environment() -> Environment:
    env = Environment(
        loader=DictLoader(
            {
                "base.html": _BASE,
                "sign_in.html": _SIGN_IN,
                "mfa.html": _MFA,
                "enrol.html": _ENROL,
                "recovery.html": _RECOVERY,
                "keys.html": _KEYS,
            }
        ),
        autoescape=True,  # every template, whatever its name
        undefined=StrictUndefined,
    )
    env.filters["when"] = _when
    return env
