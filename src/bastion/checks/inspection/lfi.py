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

__all__ = ["RESTRICTED_NAMES", "RULES", "SCREEN_WORDS"]

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
    r"config|[\w-]*ignore|[\w-]*rc|boto|s3cfg|dockercfg|vault-token|passwd-s3fs|git-credentials)(?![\w-]))"
)
# A whole value that names a file no upload or file parameter should carry (optionally after a
# directory, with stray spaces around its dot): server and framework configuration that an upload
# would replace (".htaccess", "wp-config.php", "settings.php", Symfony's "config.yml"), and kernel
# pseudo-files of /proc ("kcore", "mtrr").
_RESTRICTED_NAMES_LIST = (
    r"\.ht(?:access|passwd|digest)|\.user\s?\.\s?ini|php\s?\.\s?ini|web\s?\.\s?config|\.env(?:\.[\w-]+)?|"
    r"wp-config(?:[\s._-]{1,3}php)?|(?:default\.)?settings(?:\.local)?\s?\.\s?php|config(?:_\w+)?\s?\.\s?(?:ya?ml|php)|"
    r"(?:parameters|routing|security|services)\s?\.\s?ya?ml|local\s?\.\s?xml|"
    r"mtrr|acpi|kcore|kmsg|kallsyms|cpuinfo|meminfo|iomem|ioports|sysrq-trigger|slabinfo|vmallocinfo|zoneinfo|"
    r"buddyinfo"
)
# A backup copy of such a file is as restricted as the file ("settings.php.bak", "web.config~").
_BACKUP_SUFFIX = r"(?:[._-](?:bak|backup|old|orig|save|sav|swp|swo|tmp|copy|dist|txt|\d{1,8})|~)*"
RESTRICTED_NAMES = rf"\s*(?:[\w.-]*[/\\])*(?:{_RESTRICTED_NAMES_LIST}){_BACKUP_SUFFIX}\s*"
_RESTRICTED_ANCHORS = ("htaccess", "htpasswd", "htdigest", "user", "php", "web", "env", "wp", "settings",
                       "config", "parameters", "routing", "security", "services", "local", "mtrr", "acpi",
                       "kcore", "kmsg", "kallsyms", "cpuinfo", "meminfo", "iomem", "ioports", "sysrq",
                       "slabinfo", "vmallocinfo", "zoneinfo", "buddyinfo")  # fmt: skip

# The words a log file name is made of ("error.log", "error_log", "errorlog").
_LOG_ANCHORS = tuple(f"{prefix}{suffix}" for prefix in ("error", "errors", "access", "debug", "install")
                     for suffix in ("", "log"))  # fmt: skip

RULES: tuple[Rule, ...] = (
    Rule("lfi.traversal", 1, "path", r"(?:^|[/=\s'\"(,:|;<>`])\.{2,}/|/\.{2,}(?:/|$)|^\.{2,}$", ('..',)),
    Rule("lfi.null_byte", 1, "lower", r"[\w./\\-]\x00", ('\x00',)),
    Rule("lfi.system_file", 1, "path", rf"(?:^|[^\w.~-])/?{_UNIX_FILES}(?![\w-])", ("etc",), ("/",)),
    # any file under an absolute /etc/ or /boot/ (/etc/redhat-release, /etc/shadow-, /boot/grub/grub.cfg)
    Rule("lfi.system_file", 1, "path", r"(?:^|[^\w.~/-])/(?:etc|boot)/[\w.-]", ("etc", "boot"), ("/",)),
    Rule("lfi.system_file", 1, "path",
         r"(?:^|[^\w.~-])/?(?:proc/(?:self|\d+|sys|net|version|cpuinfo|meminfo|mounts|interrupts|cmdline|"
         r"environ|kcore|modules|partitions|stat)|sys/(?:class|kernel|devices|block|bus|firmware|module|fs|power)|"
         r"dev/(?:tcp|udp|shm|mem|kmem)|root/|var/(?:log|lib|run|spool|mail|backups)/|"
         r"usr/local/(?:etc|apache|nginx)|tmp/[\w.-]|home/[\w.-]+/\.)",
         ("proc", "sys", "dev", "root", "var", "usr", "tmp", "home"), ("/",)),
    Rule("lfi.system_file", 1, "path",
         r"\b(?:boot\.ini|win\.ini|system\.ini|autoexec\.bat|(?:windows|winnt)/(?:win\.ini|repair|system\.ini)|"
         r"system32/(?:config|drivers|inetsrv)|inetpub/|pagefile\.sys|ntuser\.dat|sam$)",
         ("boot", "win", "system", "autoexec", "windows", "winnt", "inetpub", "pagefile", "ntuser", "sam")),
    # dot-directories and dot-files, after a slash or at the start
    Rule("lfi.secret_file", 1, "path", rf"/\.{_DOT_NAME}", ("/.",)),
    Rule("lfi.secret_file", 1, "path", rf"^\.{_DOT_NAME}", (".",)),
    # a dot-file asked for by name at the end of a path (/.cursorrules, /app/.mcp.json), and the
    # instruction files of AI coding assistants (CLAUDE.md, AGENTS.md, .github/copilot-instructions.md)
    Rule("lfi.secret_file", 1, "path", r"/\.(?!well-known\b)[a-z][\w-]*(?:\.[\w-]+)*$", ("/.",)),
    Rule("lfi.secret_file", 1, "path",
         r"(?:^|/)(?:claude|agents|gemini|copilot-instructions|cursor|windsurf|cline|roo)(?:\.local)?\.md$",
         ("claude", "agents", "gemini", "instructions", "cursor", "windsurf", "cline", "roo"), (".md",)),
    # server status and diagnostics pages, Java deployment descriptors
    Rule("lfi.secret_file", 1, "path",
         r"(?:^|/)(?:server-(?:status|info)|phpinfo\.php|elmah\.axd|trace\.axd|web-inf/|meta-inf/)",
         ("status", "info", "phpinfo", "elmah", "trace", "inf")),
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
    # the Vite dev server's file and virtual-module endpoints (/@fs/etc/passwd, /@id/__x00__…), which
    # no production client calls
    Rule("lfi.wrapper", 1, "lower", r"/@(?:fs|id)/", ("/@fs/", "/@id/")),
    # a compressed SQL dump (backup.sql.gz, db.sql.zip): the whole database, never a client's file
    Rule("lfi.restricted_file", 1, "path",
         r"[\w-]\.sql\.(?:gz|bz2|xz|zst|lz4|zip|7z|rar|tgz|tar)(?:$|[?#/\s])", ("sql",)),
    Rule("lfi.restricted_file", 1, "lower", rf"^{RESTRICTED_NAMES}$", _RESTRICTED_ANCHORS),
    # --- paranoia 2 ---------------------------------------------------------------------------
    Rule("lfi.secret_file", 2, "path", r"(?:^|[\s=/])\.(?!well-known)[a-z][\w.-]*$", ('.',)),
)  # fmt: skip

# Words without which no rule of this family can match (see ``Inspector``'s screen).
_SCREEN_TEXT = (
    "etc proc sys dev root var usr tmp home boot win system system32 autoexec winnt inetpub "
    "pagefile ntuser sam id_rsa id_dsa id_ecdsa id_ed25519 authorized_keys known_hosts wp wp_config web "
    "config credentials secret secrets error errors access debug install log php phar zip expect glob jar "
    "netdoc gopher dict compress ogg rar ssh2 file fs env htaccess htpasswd git svn hg htdigest mtrr "
    "acpi kcore kmsg kallsyms cpuinfo meminfo iomem ioports sysrq slabinfo vmallocinfo zoneinfo buddyinfo "
    "status phpinfo elmah trace inf"
)
SCREEN_WORDS: frozenset[str] = frozenset(_SCREEN_TEXT.split())
