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

# After the dot of a dot-file: a directory (".git/"), or a well-known secret file name.
_DOT_NAME = (
    r"(?:(?!well-known/)[a-z0-9][\w.-]*/|"
    r"(?:env|htaccess|htpasswd|git|svn|hg|bzr|bash_history|bashrc|zshrc|profile|npmrc|pypirc|"
    r"netrc|pgpass|mysql_history|ds_store|dockerenv|gitconfig|git-credentials|aws|ssh|kube|docker|"
    r"config|[\w-]*ignore|[\w-]*rc)(?![\w-]))"
)
# The words a log file name is made of ("error.log", "error_log", "errorlog").
_LOG_ANCHORS = tuple(f"{prefix}{suffix}" for prefix in ("error", "errors", "access", "debug", "install")
                     for suffix in ("", "log"))  # fmt: skip

RULES: tuple[Rule, ...] = (
    Rule("lfi.traversal", 1, "path", r"(?:^|[/=\s'\"(,:|;<>`])\.{2,}/|/\.{2,}(?:/|$)|^\.{2,}$", ('..',)),
    Rule("lfi.null_byte", 1, "lower", r"[\w./\\-]\x00", ('\x00',)),
    Rule("lfi.system_file", 1, "path", rf"(?:^|[^\w.~-])/?{_UNIX_FILES}(?![\w-])", ("etc",), ("/",)),
    Rule("lfi.system_file", 1, "path",
         r"(?:^|[^\w.~-])/?(?:proc/(?:self|\d+|sys|net|version|cpuinfo|meminfo|mounts|interrupts|cmdline|"
         r"environ|kcore|modules|partitions|stat)|sys/(?:class|kernel|devices|block|bus|firmware|module|fs|power)|"
         r"dev/(?:tcp|udp|shm|mem|kmem)|root/|var/(?:log|lib|run|spool|mail|backups)/|"
         r"usr/local/(?:etc|apache|nginx)|tmp/[\w.-]|home/[\w.-]+/\.)",
         ("proc", "sys", "dev", "root", "var", "usr", "tmp", "home"), ("/",)),
    Rule("lfi.system_file", 1, "path",
         r"\b(?:boot\.ini|win\.ini|system\.ini|autoexec\.bat|(?:windows|winnt)/(?:system32|system|win\.ini|repair)|"
         r"system32/(?:config|drivers|inetsrv)|inetpub/|pagefile\.sys|ntuser\.dat|sam$)",
         ("boot", "win", "system", "autoexec", "windows", "winnt", "inetpub", "pagefile", "ntuser", "sam")),
    # dot-directories and dot-files, after a slash or at the start
    Rule("lfi.secret_file", 1, "path", rf"/\.{_DOT_NAME}", ("/.",)),
    Rule("lfi.secret_file", 1, "path", rf"^\.{_DOT_NAME}", (".",)),
    Rule("lfi.secret_file", 1, "path",
         r"\b(?:id_rsa|id_dsa|id_ecdsa|id_ed25519|authorized_keys|known_hosts|wp-config\.php|web\.config|"
         r"credentials\.xml|secrets?\.(?:ya?ml|json|env))\b",
         ("id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "authorized_keys", "known_hosts", "wp", "web",
          "credentials",
          "secret", "secrets")),
    Rule("lfi.secret_file", 1, "path",
         r"(?:^|/)(?:[\w-]+/){0,20}(?:error|errors|access|debug|install)[._-]?log(?:\.\w+)?$", _LOG_ANCHORS),
    Rule("lfi.wrapper", 1, "lower",
         r"\b(?:php|phar|zip|expect|glob|jar|netdoc|gopher|dict|compress\.zlib|ogg|rar|ssh2\.\w+)://",
         ("php", "phar", "zip", "expect", "glob", "jar", "netdoc", "gopher", "dict", "compress", "ogg", "rar",
          "ssh"), ("://",)),
    Rule("lfi.wrapper", 1, "lower", r"\bfile:/{1,3}[a-z]", ("file",), (":",)),
    Rule("lfi.wrapper", 1, "lower", r"/@fs/", ("/@fs/",)),
    # --- paranoia 2 ---------------------------------------------------------------------------
    Rule("lfi.secret_file", 2, "path", r"(?:^|[\s=/])\.(?!well-known)[a-z][\w.-]*$", ('.',)),
)  # fmt: skip

# Words without which no rule of this family can match (see ``Inspector``'s screen).
_SCREEN_TEXT = (
    "etc proc sys dev root var usr tmp home boot win system system32 autoexec winnt inetpub "
    "pagefile ntuser sam id_rsa id_dsa id_ecdsa id_ed25519 authorized_keys known_hosts wp wp_config web "
    "config credentials secret secrets error errors access debug install log php phar zip expect glob jar "
    "netdoc gopher dict compress ogg rar ssh2 file fs env htaccess htpasswd git svn hg"
)
SCREEN_WORDS: frozenset[str] = frozenset(_SCREEN_TEXT.split())
