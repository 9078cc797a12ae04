"""Path traversal and restricted files (``lfi``).

Approach: two questions. Does the value climb out of a directory (``../``, ``..\\``, ``.../``,
encoded, overlong or hex-literal dots and slashes)? Does it name a file or directory that no
client has a reason to send (system files such as ``/etc/passwd`` and ``/proc/self/environ``,
Windows system files, secrets in dot-directories such as ``.git/`` or ``.ssh/``, stream wrappers
such as ``php://filter``)? The rules read the ``path`` view: ``\\`` read as ``/``, hex-literal and
overlong encodings folded, NUL bytes and ``;params`` dropped, repeated slashes folded.
A NUL byte right after a file-name character (``../../x.php%00.jpg``) is its own rule.
"""

from __future__ import annotations

from ._rules import Rule

__all__ = ["RULES", "SCREEN_WORDS"]

_UNIX_FILES = (
    r"etc/(?:passwd|shadow|group|gshadow|hosts|issue|motd|master\.passwd|subuid|subgid|sudoers|crontab|fstab|"
    r"profile|bashrc|hostname|resolv\.conf|security|ssh|ssl|mysql|apache2?|nginx|httpd|php\d*|pam\.d|"
    r"environment|network|sysconfig|init\.d|rc\.d|cron\w*|shells|inittab|os-release|lsb-release|"
    r"machine-id|aliases|exports|krb5\.conf|ldap|openldap|redis|postgresql|docker|kubernetes|"
    r"[\w.-]+\.(?:conf|cnf|ini|cfg|d))"
)

RULES: tuple[Rule, ...] = (
    Rule("lfi.traversal", 1, "path", r"(?:^|[/=\s'\"(,:|;<>`])\.{2,}/|/\.{2,}(?:/|$)|^\.{2,}$"),
    Rule("lfi.null_byte", 1, "raw", r"[\w./\\-]\x00"),
    Rule("lfi.system_file", 1, "path", rf"(?:^|[^\w.~-])/?{_UNIX_FILES}(?![\w-])"),
    Rule("lfi.system_file", 1, "path",
         r"(?:^|[^\w.~-])/?(?:proc/(?:self|\d+|sys|net|version|cpuinfo|meminfo|mounts|interrupts|cmdline|"
         r"environ|kcore|modules|partitions|stat)|sys/(?:class|kernel|devices|block|bus|firmware|module|fs|power)|"
         r"dev/(?:tcp|udp|shm|mem|kmem)|root/|var/(?:log|lib|run|spool|mail|backups)/|"
         r"usr/local/(?:etc|apache|nginx)|tmp/[\w.-]|home/[\w.-]+/\.)"),
    Rule("lfi.system_file", 1, "path",
         r"\b(?:boot\.ini|win\.ini|system\.ini|autoexec\.bat|(?:windows|winnt)/(?:system32|system|win\.ini|repair)|"
         r"system32/(?:config|drivers|inetsrv)|inetpub/|pagefile\.sys|ntuser\.dat|sam$)"),
    Rule("lfi.secret_file", 1, "path",
         r"(?:^|/)\.(?!well-known/)[a-z0-9][\w.-]*/|"
         r"(?:^|/)\.(?:env|htaccess|htpasswd|git|svn|hg|bzr|bash_history|bashrc|zshrc|profile|npmrc|pypirc|"
         r"netrc|pgpass|mysql_history|ds_store|dockerenv|gitconfig|git-credentials|aws|ssh|kube|docker|"
         r"config|[\w-]*ignore|[\w-]*rc)(?![\w-])|"
         r"\b(?:id_rsa|id_dsa|id_ecdsa|id_ed25519|authorized_keys|known_hosts|wp-config\.php|web\.config|"
         r"credentials\.xml|secrets?\.(?:ya?ml|json|env))\b|"
         r"(?:^|/)(?:[\w-]+/){0,20}(?:error|errors|access|debug|install)[._-]?log(?:\.\w+)?$"),
    Rule("lfi.wrapper", 1, "lower",
         r"\b(?:php|phar|zip|expect|glob|jar|netdoc|gopher|dict|compress\.zlib|ogg|rar|ssh2\.\w+)://|"
         r"\bfile:/{1,3}[a-z]|/@fs/"),
    # --- paranoia 2 ---------------------------------------------------------------------------
    Rule("lfi.secret_file", 2, "path", r"(?:^|[\s=/])\.(?!well-known)[a-z][\w.-]*$"),
)  # fmt: skip

# Words without which no rule of this family can match (see ``Inspector``'s screen).
_SCREEN_TEXT = (
    "etc proc sys dev root var usr tmp home boot win system system32 autoexec winnt inetpub "
    "pagefile ntuser sam id_rsa id_dsa id_ecdsa id_ed25519 authorized_keys known_hosts wp wp_config web "
    "config credentials secret secrets error errors access debug install log php phar zip expect glob jar "
    "netdoc gopher dict compress ogg rar ssh2 file fs env htaccess htpasswd git svn hg"
)
SCREEN_WORDS: frozenset[str] = frozenset(_SCREEN_TEXT.split())
