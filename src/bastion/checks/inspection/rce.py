"""OS command injection (``rce``).

Approach: a value becomes a command when it reaches a shell and either *starts* one or *escapes*
into one through a separator (``;``, ``|``, ``&``, ``&&``, ``||``, a newline), a substitution
(`` `…` ``, ``$(…)``, ``<(…)``), a Shellshock function header, or Windows batch syntax
(``for … in (…) do``, ``if exist``). The rules look for a known command word right after such a
point. Commands are in two lists:

* *distinctive* names (``whoami``, ``ifconfig``, ``wget``, ``powershell``…) match after a separator
  on their own;
* names that are also English words (``cat``, ``more``, ``time``, ``find``…) match only when an
  argument that looks like a shell argument follows (an option ``-x``, a path, a file name with
  an extension, a URL, ``$var``, a redirection), so ``hello; more than`` and ``; time he came``
  stay quiet.

The rules read the ``shell`` view, in which the evasions a shell would undo are undone first:
``c'a't``, ``c\\at``, ``c$@at``, ``cat${IFS}/etc/passwd``, ``{cat,/etc/passwd}``.
"""

from __future__ import annotations

import re

from ._rules import Rule, keywords, trie

__all__ = ["COMMANDS", "RULES", "SCREEN_SHAPE", "SCREEN_WORDS"]

_DISTINCT = (
    "whoami|uname|ifconfig|ipconfig|netstat|nslookup|ncat|netcat|nc|socat|wget|curl|telnet|tftp|"
    r"lwp-download|lwp-request|lwp-mirror|lwp-rget|bash|sh|zsh|ksh|csh|tcsh|dash|busybox|powershell|pwsh|"
    "cmd|perl[0-9.]*|python[0-9.]*|php[0-9.]*|ruby[0-9.]*|node|nodejs|lua|tclsh|gawk|nawk|awk|sed|xargs|chmod|chown|chgrp|"
    "chattr|mkfifo|mknod|passwd|useradd|userdel|usermod|adduser|crontab|systemctl|sudo|doas|pkexec|su|"
    "nohup|strace|ltrace|gdb|gcc|g\\+\\+|clang|tcc|c89|c99|tar|gzip|gunzip|bzip2|bunzip2|unxz|xz|zcat|"
    "unzip|7z|base64|base32|xxd|hexdump|strings|tac|nl|ls|pwd|ps|pstree|pkill|killall|lsof|uptime|"
    "hostname|getent|id|printenv|env|lastlog|dmesg|lsmod|insmod|modprobe|iptables|tcpdump|nmap|masscan|"
    "ssh|scp|sftp|rsync|openssl|certutil|bitsadmin|wmic|regsvr32|rundll32|mshta|cscript|wscript|"
    "schtasks|tasklist|taskkill|systeminfo|iex|iwr|irm|visudo|vi|vim|nvim|emacs|nano|pip|pipx|pip3|npm|npx|"
    r"apt-get|apt|yum|dnf|apk|kubectl|mysql|psql|sqlite3|redis-cli|uconv|iconv|flock|cpulimit|cscli|"
    r"ansible(?:-[a-z]+)?|chef(?:-[a-z]+)?|knife|ruby|irb|jrunscript|jshell|rlwrap|expect|setsid|"
    "wall|mail|sendmail|mutt|nice|ionice|perf|bsdtar|lastlogin|aptitude|htop|regedit|bcdboot|bcdedit|"
    "diskpart|vssadmin|wevtutil|netsh|icacls|takeown|cacls|attrib"
    "|timeout|stdbuf|unshare|chroot|runuser|ldd|objdump|readelf|"
    "getfacl|setfacl|sysctl|service|shutdown|reboot|halt|poweroff|mount|umount|fdisk|mkfs|losetup"
)
# Names that are never English words or product names people search for: flagged even alone.
_STRONG = (
    "whoami|uname|ifconfig|ipconfig|netstat|nslookup|cscli|ansible-[a-z]+|chef-[a-z]+|bsdtar|lastlogin|"
    "lastb|faillog|visudo|systeminfo|tasklist|taskkill|certutil|bitsadmin|wmic|regsvr32|rundll32|mshta|"
    "bcdboot|bcdedit|regedit|diskpart|vssadmin|wevtutil|netsh|icacls|takeown|cacls|htop|aptitude|"
    "getfacl|setfacl|pkexec|mkfifo|socat|ncat|netcat|tcpdump|masscan|printenv|pstree|killall|crontab|"
    "useradd|userdel|usermod|adduser|chattr|xxd|hexdump|lsmod|insmod|modprobe|lsof|dmesg"
)
_COMMON = (
    "cat|more|less|head|tail|find|sort|cut|time|date|echo|printf|kill|file|type|which|who|top|sleep|"
    "exec|eval|source|make|touch|split|join|paste|grep|egrep|fgrep|ping|host|dig|copy|del|move|ren|start|"
    "call|rm|cp|mv|ln|dd|mkdir|rmdir|fold|comm|diff|patch|watch|tee|tr|rev|look|script|screen|bridge|"
    "net|reg|sc|dir|set|export|cd|pushd|chdir|ed|ex|w|df|du|ip|ss|od|last|finger|groups|at|batch|bc|git|docker"
)
COMMANDS = trie(f"{_STRONG}|{_DISTINCT}|{_COMMON}")
# The lists as tries, for the patterns (see ``trie``).
_DISTINCT_T, _COMMON_T, _STRONG_T = trie(_DISTINCT), trie(_COMMON), trie(_STRONG)
_COMMANDS_T = trie(f"{_DISTINCT}|{_COMMON}")
# Words that run the next word as a command.
_PREFIX = (
    r"(?:(?:time|nohup|strace|ltrace|sudo|doas|env|nice|xargs|exec|command|builtin|busybox|"
    r"timeout\s+\d+\w?)\s+)*"
)
# What follows a command in a real invocation (not in a sentence).
_ARG = (
    r"(?:-{1,2}[a-z0-9]|/|~|\.{1,2}/|\$|[<>|;&`]|https?://|\d{1,3}(?:\.\d{1,3}){3}|"
    r"(?:passwd|shadow|id_rsa|hosts)\b|[\w.-]+\.(?:txt|log|sh|php|py|pl|rb|js|conf|cfg|ini|gz|xz|zip|tar|bak|sql|yml|yaml|json|xml|exe|bat|ps1|c|db)\b)"
)
# Anchors for rules that need an _ARG after one space (the shell view collapses whitespace): each
# alternative of _ARG starts with one of these, or contains a dot (file names, IPv4 addresses).
_ARG_ANCHORS = (" -", " /", " ~", ".", " $", " <", " >", " |", " ;", " &", " `", " http", " passwd",
                " shadow", " id_rsa", " hosts")  # fmt: skip
# The first word of each _STRONG name ("regsvr32" -> "regsvr", "ansible-[a-z]+" -> "ansible").
_STRONG_ANCHORS = tuple(sorted({re.split(r"[^a-z_]", name)[0] for name in _STRONG.split("|")}))
# A separator, as alternatives that each start with a literal (the regex engine then skips ahead).
_SEP_CHARS = r"(?:;|\||&|`|\n|\$\(|<\(|>\(|\{)"
_SEP = rf"(?:^|{_SEP_CHARS})"
# What ends a command name: the end, a space or shell punctuation, ".exe", or a Windows switch
# ("bcdboot/r", "dir/s").
_END = r"(?=$|[\s;|&<>`)'\",}]|\.exe\b|/[a-z?](?!\w))"
_PATH = r"(?:/?(?:[\w.-]+/)*)?"

SCREEN_SHAPE = (
    rf";\s*(?:\$\w+\s+)*(?:['\"]\s*)?{_PREFIX}{_PATH}(?:{_DISTINCT_T})\b|"
    rf"&\s*(?:\$\w+\s+)*(?:['\"]\s*)?{_PREFIX}{_PATH}(?:{_DISTINCT_T})\b"
)

_GLOB_PATH = (
    r"(?:/[\w.?*\[\]!/-]{0,200})?/[\w.-]{0,100}(?:\?|\*|\[[^\]\s]{0,50}\])[\w.?*\[\]!-]{0,100}(?=/|$|[\s;|&<>`)])"
)
_COMMAND_WORDS = keywords(f"{_DISTINCT}|{_COMMON}")

RULES: tuple[Rule, ...] = (
    Rule("rce.command", 1, "shell", rf"(?:;|\||&|`|\$\(|<\(|>\(|\{{)\s*(?:\$\w+\s+)*"
                                    rf"{_PREFIX}{_PATH}(?:{_DISTINCT_T}){_END}",
         keywords(_DISTINCT), (";", "|", "&", "`", "$(", "<(", ">(", "{")),
    # The same command, with an argument, after a separator or at the very start (two rules, so
    # that the first can skip ahead to separator characters and the second is tried only once).
    Rule("rce.command", 1, "shell", rf"{_SEP_CHARS}\s*(?:\$\w+\s+)*{_PREFIX}{_PATH}"
                                    rf"(?:{_COMMANDS_T})\s+{_ARG}", _COMMAND_WORDS, _ARG_ANCHORS),
    Rule("rce.command", 1, "shell", rf"^\s*(?:\$\w+\s+)*{_PREFIX}{_PATH}"
                                    rf"(?:{_COMMANDS_T})\s+{_ARG}", _COMMAND_WORDS, _ARG_ANCHORS),
    Rule("rce.command", 1, "shell", rf"{_SEP}\s*(?:time|nohup|strace|ltrace|sudo|env|xargs)\s+"
                                    rf"(?:{_DISTINCT_T}){_END}",
         ('time', 'nohup', 'strace', 'ltrace', 'sudo', 'env', 'xargs')),
    Rule("rce.command", 1, "shell", rf"(?:^|[;|&`\n]|\$\(|<\(|\{{)\s*(?:['\"]\s*)?"
                                    rf"{_PREFIX}(?:{_STRONG_T}){_END}", _STRONG_ANCHORS),
    Rule("rce.command", 1, "shell", r"(?:^|[^\w.-])/?(?:usr/)?(?:local/)?s?bin/[a-z][\w.+-]*",
         ("bin", "sbin"), ("/",)),
    Rule("rce.command", 1, "shell", rf"(?:^|[\s;|&(])(?:cmd(?:\.exe)?\s+/[ck]\b|powershell(?:\.exe)?\s+-\w|"
                                    rf"(?:{_DISTINCT_T})\.exe\b)", ("cmd", "powershell", "exe")),
    Rule("rce.substitution", 1, "lower",
         r"\$\((?!\s*['\"]|\s*(?:document|window|this|function|jquery)\b)\s*[a-z/.\\$(`]|"
         r"\$\[[^\]]{0,200}\]|<\(\s*[a-z/$]|\$\{\s*`|\$\{\s*[a-z_]\w*\s*\}", ('$(', '$[', '<(', '${')),
    Rule("rce.substitution", 1, "shell", rf"`{_PREFIX}{_PATH}(?:{_COMMANDS_T})(?=[\s`;|&]|$)",
         _COMMAND_WORDS, ("`",)),
    Rule("rce.substitution", 1, "lower",
         r"\$\{[^}]{0,80}?(?:jndi|::-|\$\{(?:lower|upper|env|sys|date):)|\bjndi\s?:\s?(?:ldaps?|rmi|dns|iiop|corba|nds|nis|https?):",
         ("jndi", "::-", "lower", "upper", "env", "sys", "date")),
    Rule("rce.tilde", 1, "lower", r"(?:^|[\s;|&])~[+-](?=$|[\s/;|&])", ('~+', '~-')),
    Rule("rce.shellshock", 1, "lower", r"(?:^|[^\w\s)])\s*\(\s*\)\s*\{", ("{",), ("(",)),
    Rule("rce.shell_variable", 1, "shell", r"\$\{?(?:shell|ifs|bash|0|path|home|pwd)\}?(?=[\s/;|&]|$)",
         ('$',)),
    Rule("rce.redirect", 1, "shell",
         r"(?:^|[\s;|&])\d?(?:>>?|<)\s*&?\s*/(?:tmp|dev|etc|var|proc|root|home)/|/dev/(?:tcp|udp)/|<<<",
         ('>', '<', '/dev/')),
    # a path with a glob in it (/bin/ca? /e*c/pa??wd), after a space or separator, or at the start
    Rule("rce.glob_path", 1, "lower", rf"[\s;|&`(=<>'\"]{_GLOB_PATH}", ("?", "*", "["), ("/",)),
    Rule("rce.glob_path", 1, "lower", rf"^{_GLOB_PATH}", ("?", "*", "["), ("/",)),
    Rule("rce.windows", 1, "lower",
         r"\bfor\s+(?:/[a-z]\s+(?:\S+\s+)?(?:\"[^\"]{0,100}\"\s+)?){0,5}%%?[^\s]{1,40}\s+in\s*\(.{0,300}?\)\s*do\b",
         ('for',)),
    Rule("rce.windows", 1, "lower",  # requires: what each alternative compares or tests
         r"\bif\s+(?:/i\s+)?(?:not\s+)?(?:exist|defined|errorlevel)\s+\S|\bif\s+/i\s|"
         r"\bif\s+(?:/i\s+)?(?:not\s+)?[\"\[]?%[~\w]|"
         r"\bif\s+(?:not\s+)?(?:\"[^\"]{0,60}\"|\[[^\]]{0,60}\]|\S+)\s*(?:==|\s(?:equ|neq|lss|leq|gtr|geq)\s)\s*"
         r"(?:\"[^\"]{0,60}\"|\[[^\]]{0,60}\]|\S+)\s+(?:\(|@|echo\b|goto\b|call\b|"
         r"set\b|cmd\b|exit\b|start\b|del\b|copy\b|md\b|type\b|ping\b)|\bif\s+(?:not\s+)?\(.{0,80}?\)\s*equ\s",
         ("if",),
         ("exist", "defined", "errorlevel", "/i", "%", "==", "equ", "neq", "lss", "leq", "gtr", "geq")),
    Rule("rce.windows", 1, "lower",
         r"\b(?:invoke-(?:webrequest|restmethod|expression|command|item|wmimethod|shellcode)|start-process|"
         r"start-bitstransfer|new-object\s+(?:-\w+\s+)?(?:system\.)?net\.webclient|set-executionpolicy|"
         r"add-mppreference|get-wmiobject)\b|\.download(?:string|file|data)\s*\(|\s-enc(?:odedcommand)?\s+[a-z0-9+/=]{16,}",
         ("invoke", "start", "object", "executionpolicy", "mppreference", "wmiobject", "downloadstring",
          "downloadfile", "downloaddata", "enc", "encodedcommand")),
    Rule("rce.alias", 1, "shell", r"(?:^|[;|&\s])alias\s+(?:-p\s+|[+-]\w+[+-]?\s+)*"
                                  r"(?:[\w+-]+\s+){0,2}[\w.+-]+=", ('alias',)),
    Rule("rce.code_exec", 1, "lower",
         r"\b(?:system|shell_exec|passthru|popen|proc_open|pcntl_exec|execsync|spawnsync|os\.system|os\.popen|"
         r"subprocess\.\w+|runtime\.getruntime\(\)\.exec)\s*\(\s*['\"`]|<\?php\b|<!--\s*#\s*exec\b",
         ("system", "shell_exec", "passthru", "popen", "proc_open", "pcntl_exec", "execsync", "spawnsync",
          "exec", "subprocess.", "<?php")),
    # --- paranoia 2 ---------------------------------------------------------------------------
    Rule("rce.command", 2, "shell", rf"(?:[;|&`]|\$\(|\n)\s*(?:{_COMMON_T})(?=$|[;|&<>`)])",
         (';', '|', '&', '`', '$(', '\n')),
    Rule("rce.command", 2, "shell", rf"^\s*{_PREFIX}(?:{_DISTINCT_T})\s+\S"),
    Rule("rce.substitution", 2, "lower", r"\$\{[^}]{0,200}\}|`[^`]{1,80}`", ('${', '`')),
    Rule("rce.command", 2, "shell", rf"(?:^|\s)!(?:{_DISTINCT_T}){_END}", ('!',)),
    Rule("rce.fork_bomb", 2, "lower", r"(?<!\w)\w{1,40}\s*\(\s*\)\s*\{[^{}]{0,80}[|&][^{}]{0,80}\}", ('{',)),
    Rule("rce.brace_expansion", 2, "lower", r"\{\s*,\s*[$\"'/\w?]|\{[^{}\s]{1,80},\s*\}", ('{',)),
    Rule("rce.assignment", 2, "lower", r"(?<!\w)\w{1,40}=[^\s;]{0,80};\s*\$\w+", ('=',)),
    # mail protocol commands smuggled after a line break (SMTP, POP3, IMAP)
    Rule("rce.mail_command", 2, "lower",
         r"[\r\n][ \t]{0,20}(?:rcpt\s+to|mail\s+from|data|helo|ehlo|quit|rset|vrfy|expn|help|noop|starttls|"
         r"user\s+\S|pass\s+\S|apop|retr|dele|stat|uidl|list\s+\d|top\s+\d)\b|"
         r"[\r\n][ \t]{0,20}[a-z]?\d{1,4}\s+(?:login|select|examine|fetch|store|copy|append|status|list|lsub|"
         r"search|uid|"
         r"expunge|logout|capability|create|delete|rename|subscribe|authenticate|close|check|noop)\b",
         ('\r', '\n')),
    Rule("rce.shell_variable", 2, "lower", r"(?:^|[;|&\s])(?:\w+=[^\s;]{0,80};){3,}\s*\$\w+\$\w+", ('=',)),
)  # fmt: skip

_KEYWORDS = (
    "vi exist defined errorlevel equ neq lss leq gtr geq alias invoke start new object download "
    "system shell_exec passthru popen proc_open pcntl_exec execsync spawnsync subprocess runtime php "
    "cmd powershell jndi ifs shell bin usr local sbin dev tmp etc proc var root home passwd shadow"
)
# Words without which no rule of this family can match (see ``Inspector``'s screen): the
# names that are never anything but commands (split at "-", as the screen's tokenizer does) and
# batch, PowerShell and code-execution keywords. Other command names are screened by SCREEN_SHAPE:
# their rules also need a separator before them or an argument after them.
SCREEN_WORDS: frozenset[str] = frozenset(
    word
    for name in re.sub(r"\(\?:-\[a-z\]\+\)\?|\[[^\]]*\]\??|\\\+|\?|\\", "", _STRONG).split("|")
    for word in re.split(r"[^a-z0-9_]+", name)
    if word and word != "get"
) | frozenset(_KEYWORDS.split())
