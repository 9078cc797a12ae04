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
    r"apt-get|yum|dnf|apk|kubectl|mysql|psql|sqlite3|redis-cli|uconv|iconv|flock|cpulimit|cscli|"
    r"ansible(?:-[a-z]+)?|chef(?:-[a-z]+)?|knife|ruby|irb|jrunscript|jshell|rlwrap|expect|setsid|"
    "wall|mail|sendmail|mutt|nice|ionice|perf|bsdtar|lastlogin|aptitude|htop|regedit|bcdboot|bcdedit|"
    "diskpart|vssadmin|wevtutil|netsh|icacls|takeown|cacls|attrib|rmt(?:-[a-z]+)?"
    "|timeout|stdbuf|unshare|chroot|runuser|ldd|objdump|readelf|"
    "getfacl|setfacl|sysctl|service|shutdown|reboot|halt|poweroff|mount|umount|fdisk|mkfs|losetup|"
    # More binaries that are no word of any language (GTFOBins-style lists of what an attacker runs
    # once a command is reached: downloaders, archivers, interpreters, system and network tools).
    "aa-exec|agetty|aria2c|arj|arp|arping|ascii85|aspell|atobm|base58|basenc|batcat|bconsole|bpftrace|"
    "busctl|byebug|capsh|certbot|choom|clamscan|cobc|cowsay|cowthink|cpan|cpio|csplit|csvtool|cupsfilter|"
    "debugfs|dmidecode|dmsetup|dos2unix|unix2dos|dosbox|dotnet|dpkg|dstat|dvips|easy_install|enscript|"
    "exiftool|facter|fping|ftp|gcloud|gcore|genisoimage|ghc|ghci|ginsh|gtester|hping3|iftop|ispell|jjs|"
    "journalctl|jq|ksshell|ksu|latexmk|ldconfig|lftp|loginctl|logsave|lualatex|luatex|mawk|minicom|"
    "mosquitto|msfconsole|msfvenom|mtr|nasm|ncdu|ncftp|neofetch|nft|nroff|nsenter|ntpdate|openvpn|openvt|"
    "opkg|pandoc|pdflatex|pdftex|perlbug|pidstat|psftp|rlogin|rpm|rpmquery|rtorrent|run-parts|run-mailcap|"
    "rview|rvim|scanmem|scrot|setarch|shuf|slsh|smbclient|sqlmap|ssh-keygen|ssh-keyscan|ssh-agent|sshpass|"
    "start-stop-daemon|taskset|tasksh|tdbtool|timedatectl|tmate|tmux|torify|torsocks|tshark|unexpand|"
    "unsquashfs|update-alternatives|uudecode|uuencode|valgrind|varnishncsa|vigr|vimdiff|vipw|virsh|w3m|"
    "whiptail|whois|xdotool|xelatex|xetex|xmodmap|zypper|lsb_release|mysqldump|pg_dump|nproc|lscpu|lsblk|"
    "lspci|lsusb|ifup|ifdown|iwconfig|traceroute|tracepath|bzcat|xzcat|lzcat|zstd|zstdcat|lz4|unlzma|pigz|"
    "unrar|7za|7zr|chpasswd|chsh|groupadd|gpasswd|newgrp|sestatus|getenforce|setenforce|auditctl|"
    "firewall-cmd|ufw|nmcli|gobuster|nikto|hashcat|mimikatz|psexec|elinks|lynx|rsh|rexec|podman|kubeadm|"
    "docker-compose|terraform|virtualenv|pyenv|rbenv|tclsh8\\.6|wish8\\.6|php-cgi|phpunit|erb|"
    "certreq|cmstp|msiexec|msbuild|installutil|regasm|regsvcs|odbcconf|forfiles|pcalua|mavinject|esentutl|"
    "extrac32|findstr|makecab|rpcping|xcopy|robocopy|nltest|dsquery|qwinsta|quser|klist|ntdsutil|fsutil|"
    "net1|cmdkey|runas|wusa|bginfo|dnscmd|mpcmdrun|appcmd|pnputil|powercfg|dism|chcp|nbtstat|route|"
    "tracert|pathping|getmac|wevtutil|auditpol|gpresult|gpupdate|cipher|bitlocker|manage-bde|"
    "gci|gcm|gwmi|iwmi|icm|ipmo|saps|sls|gps|gsv|sasv|spps|epcsv|ipcsv|rwmi|swmi|gdr|ndr|rni|cpi|rjb|gjb|sajb"
)
# Names that are never English words or product names people search for: flagged even alone.
_STRONG = (
    "whoami|uname|ifconfig|ipconfig|netstat|nslookup|cscli|ansible-[a-z]+|chef-[a-z]+|bsdtar|lastlogin|"
    "lastb|faillog|visudo|systeminfo|tasklist|taskkill|certutil|bitsadmin|wmic|regsvr32|rundll32|mshta|"
    "bcdboot|bcdedit|regedit|diskpart|vssadmin|wevtutil|netsh|icacls|takeown|cacls|htop|aptitude|"
    "getfacl|setfacl|pkexec|mkfifo|socat|ncat|netcat|tcpdump|masscan|printenv|pstree|killall|crontab|"
    "useradd|userdel|usermod|adduser|chattr|xxd|hexdump|lsmod|insmod|modprobe|lsof|dmesg|"
    # AppArmor's tools (aa-exec is in _DISTINCT): "aa-" plus an English verb is still no word
    "aa-status|aa-enabled|aa-complain|aa-enforce|aa-disable|aa-audit|aa-teardown|aa-unconfined|aa-genprof|"
    "aa-logprof|aa-autodep|aa-cleanprof|aa-mergeprof|aa-notify|aa-remove-unknown"
)
# Strong names of programs that only run interactively.
_INTERACTIVE = "(?:regedit|htop|aptitude|diskpart|visudo)"
_COMMON = (
    "cat|more|less|head|tail|find|sort|cut|time|date|echo|printf|kill|file|type|which|who|top|sleep|"
    "exec|eval|source|make|touch|split|join|paste|grep|egrep|fgrep|ping|host|dig|copy|del|move|ren|start|"
    "call|rm|cp|mv|ln|dd|mkdir|rmdir|fold|comm|diff|patch|watch|tee|tr|rev|look|script|screen|bridge|"
    "net|reg|sc|dir|set|export|cd|pushd|chdir|ed|ex|w|df|du|ip|ss|od|last|finger|groups|at|batch|bc|git|"
    "docker|apt|ar|nm|pax|pg|pico|pr|ptx|tbl|troff|ul|uniq|wc|zip|yarn|conda|vagrant|restic|kill|printf|umask|"
    "ulimit|unset|typeset|compgen|getopts|mapfile|declare|readonly|disown|bg|fg|lp|hd|tex|latex|pry"
)
COMMANDS = trie(f"{_STRONG}|{_DISTINCT}|{_COMMON}")
# The lists as tries, for the patterns (see ``trie``).
_DISTINCT_T, _COMMON_T, _STRONG_T = trie(_DISTINCT), trie(_COMMON), trie(_STRONG)
_COMMANDS_T = trie(f"{_DISTINCT}|{_COMMON}")
# Words that run the next word as a command (trap and eval run their first argument).
_PREFIX = (
    r"(?:(?:time|nohup|strace|ltrace|sudo|doas|env|nice|xargs|exec|command|builtin|busybox|trap|eval|"
    r"timeout\s+\d+\w?)\s+)*"
)
# What follows a command in a real invocation (not in a sentence).
_ARG = (
    r"(?:-{1,2}[a-z0-9]|/|~|\.{1,2}/|\$|[<>|;&`]|https?://|\d{1,3}(?:\.\d{1,3}){3}|[a-z]:\\|"
    r"(?:passwd|shadow|id_rsa|hosts)\b|[\w.-]+\.(?:txt|log|sh|php|py|pl|rb|js|conf|cfg|ini|gz|xz|zip|tar|bak|sql|yml|yaml|json|xml|exe|bat|ps1|c|db)\b)"
)
# At the start of a value, options alone do not make a command line ("rm -rf advice" is a search):
# after them comes a shell-like operand (a path, $var, a redirection, a URL, a file name) or the end.
_OPERAND_ARG = _ARG.replace(r"\d{1,3}(?:\.\d{1,3}){3}|", "").replace(r"-{1,2}[a-z0-9]|", "")
assert _OPERAND_ARG != _ARG
_START_ARG = rf"(?:(?:-{{1,2}}[a-z0-9][\w=-]{{0,30}}\s*)+(?:$|{_OPERAND_ARG})|{_OPERAND_ARG})"
# Anchors for rules that need an _ARG after one space (the shell view collapses whitespace): each
# alternative of _ARG starts with one of these, or contains a dot (file names, IPv4 addresses).
_ARG_ANCHORS = (" -", " /", " ~", ".", " $", " <", " >", " |", " ;", " &", " `", " http", " passwd",
                " shadow", " id_rsa", " hosts", ":\\")  # fmt: skip
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
    rf";[\s(]*(?:\$\w+\s+)*(?:['\"]\s*)?{_PREFIX}{_PATH}(?:{_DISTINCT_T})\b|"
    rf"&[\s(]*(?:\$\w+\s+)*(?:['\"]\s*)?{_PREFIX}{_PATH}(?:{_DISTINCT_T})\b|"
    # a program with an option, a path or a number after "&" (the other separators are screen
    # characters or shapes already), and net.exe subcommands
    r"&\s*[a-z][\w.+-]{0,30}\s+(?:-|/|\d)|\bnet1?(?:\.exe)?\s+(?:user|users|localgroup|group|view|use|share|"
    r"start|stop|accounts|config|session|time|file)\b"
)

# The globbed segment holds a name character or "?" ("/???/??t", "/e*c"): "/*" alone opens a comment.
_GLOB_PATH = (
    r"(?:/[\w.?*\[\]!/-]{0,200})?/(?=[\w.*\[\]!-]{0,100}[\w?])[\w.-]{0,100}(?:\?|\*|\[[^\]\s]{0,50}\])"
    r"[\w.?*\[\]!-]{0,100}(?=/|$|[\s;|&<>`)])"
)
# An operand of a batch IF comparison: quoted, bracketed, or a bare word without (), ":" or "=".
_BATCH_OPERAND = r"(?:\"[^\"]{0,60}\"|\[[^\]]{0,60}\]|[^\s:()\"\[=]{1,60})"
_COMMAND_WORDS = keywords(f"{_DISTINCT}|{_COMMON}")

RULES: tuple[Rule, ...] = (
    Rule("rce.command", 1, "shell", rf"(?:;|\||&|`|\$\(|<\(|>\(|\{{)[\s(]*(?:\$\w+\s+)*"
                                    rf"{_PREFIX}{_PATH}(?:{_DISTINCT_T}){_END}",
         keywords(_DISTINCT), (";", "|", "&", "`", "$(", "<(", ">(", "{")),
    # The same command, with an argument, after a separator or at the very start (two rules, so
    # that the first can skip ahead to separator characters and the second is tried only once).
    Rule("rce.command", 1, "shell", rf"{_SEP_CHARS}\s*(?:\$\w+\s+)*{_PREFIX}{_PATH}"
                                    rf"(?:{_COMMANDS_T})\s+{_ARG}", _COMMAND_WORDS, _ARG_ANCHORS),
    # At the very start, a host name or an address after "ping", "dig" or "host" is what a network
    # tool form expects, not an injection: there the argument must look like a shell argument.
    Rule("rce.command", 1, "shell", rf"^\s*(?:\$\w+\s+)*{_PREFIX}{_PATH}"
                                    rf"(?:{_COMMANDS_T})\s+{_START_ARG}", _COMMAND_WORDS, _ARG_ANCHORS),
    # A distinctive name (no English word) at the start, one operand, then an option with its value:
    # "ansible all -m ping", "ssh host -p 2222", "nc host -e sh"
    Rule("rce.command", 1, "shell", rf"^\s*{_PREFIX}{_PATH}(?:{_DISTINCT_T})\s+[\w.*:@/-]{{1,60}}\s+"
                                    r"(?:-[a-z]|--[a-z][\w-]{1,30})(?:=\S|\s+[\w./$~-])",
         keywords(_DISTINCT), (" -",)),
    Rule("rce.command", 1, "shell", rf"{_SEP}\s*(?:time|nohup|strace|ltrace|sudo|env|xargs)\s+"
                                    rf"(?:{_DISTINCT_T}){_END}",
         ('time', 'nohup', 'strace', 'ltrace', 'sudo', 'env', 'xargs')),
    # A strong name after a separator, or starting the value; at the start, a program that only
    # runs interactively (regedit, htop, diskpart) is not an injection without an argument.
    Rule("rce.command", 1, "shell", rf"(?:[;|&`\n]|\$\(|<\(|\{{)\s*(?:['\"]\s*)?"
                                    rf"{_PREFIX}(?:{_STRONG_T}){_END}", _STRONG_ANCHORS),
    Rule("rce.command", 1, "shell", rf"^\s*(?:['\"]\s*)?(?!{_INTERACTIVE}(?:\.exe)?['\"]?\s*$)"
                                    rf"{_PREFIX}(?:{_STRONG_T}){_END}", _STRONG_ANCHORS),
    Rule("rce.command", 1, "shell", r"(?:^|[^\w.-])/?(?:usr/)?(?:local/)?s?bin/[a-z][\w.+-]*",
         ("bin", "sbin"), ("/",)),
    Rule("rce.command", 1, "shell", rf"(?:^|[\s;|&(])(?:cmd(?:\.exe)?\s+/[ck]\b|powershell(?:\.exe)?\s+-\w|"
                                    rf"(?:{_DISTINCT_T})\.exe\b)", ("cmd", "powershell", "exe")),
    Rule("rce.substitution", 1, "lower",
         r"\$\((?!\s*['\"]|\s*(?:document|window|this|function|jquery)\b)\s*[a-z/.\\$(`]|"
         r"\$\[[^\]]{0,200}\]|<\(\s*[a-z/$]|\$\{\s*`|\$\{\s*[a-z_]\w*\s*\}|"
         # parameter expansion with a shell operator: ${x#pat}, ${path%%/*}, ${v:-default}, ${v/a/b},
         # ${v^^}, ${#v}; not what template literals say: "${user.name}", "${n%2}", "${a/b}", and
         # Spring's "${port:8080}"
         r"\$\{[a-z_]\w*(?:#|%(?![\d\s])|:[-=?+]|//|/[^/}]{0,80}/|[\^,]{1,2}\})|\$\{#[a-z_]\w*\}",
         ('$(', '$[', '<(', '${')),
    Rule("rce.substitution", 1, "shell", rf"`{_PREFIX}{_PATH}(?:{_COMMANDS_T})(?=[\s`;|&]|$)",
         _COMMAND_WORDS, ("`",)),
    # output process substitution, >(tee log): "x >(y)" in a comparison names no command
    Rule("rce.substitution", 1, "shell", rf"(?:^|[\s;|&])>\(\s*{_PREFIX}{_PATH}(?:{_COMMANDS_T}){_END}",
         _COMMAND_WORDS, (">(",)),
    # a backslash in front of a command name at the start bypasses aliases and filters: \ls, \wget …
    Rule("rce.command", 1, "lower", rf"^\s*\\(?:{_DISTINCT_T}|{_STRONG_T})(?=$|[\s;|&])",
         (*keywords(_DISTINCT), *_STRONG_ANCHORS), ("\\",)),
    Rule("rce.substitution", 1, "lower",
         r"\$\{[^}]{0,80}?(?:jndi|::-|\$\{(?:lower|upper|env|sys|date):)|\bjndi\s?:\s?(?:ldaps?|rmi|dns|iiop|corba|nds|nis|https?):",
         ("jndi", "::-", "lower", "upper", "env", "sys", "date")),
    # tilde expansion of the directory stack (~+, ~-2) and history expansion (!-1, !!)
    Rule("rce.tilde", 1, "lower", r"(?:^|[\s;|&`(])~[+-]\d*(?=$|[\s/;|&`)])", ('~+', '~-')),
    Rule("rce.history", 1, "lower", r"(?:^|[\s;|&`(])!(?:-\d+|!)(?=$|[\s:;|&`)!])", ('!-', '!!')),
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
    # IF in batch syntax: a test (exist, defined, errorlevel, cmdextversion, a %variable%), or a
    # comparison (== or a batch-only operator) followed by a command. After "==" the command must
    # be a word that no programming language puts there ("then", "and"…), and the operands hold
    # no parenthesis or colon, so pasted code ("if (x == 1) {", "if x == 1: return") stays quiet.
    Rule("rce.windows", 1, "lower",  # requires: what each alternative compares or tests
         r"\bif\s*/i\s|\bif\s+(?:/i\s+)?(?:not\s+)?(?:exist|defined|errorlevel|cmdextversion)\s+\S|"
         r"\bif\s+(?:/i\s+)?(?:not\s+)?[\"\[]?%[~\w]|"
         # operands in () or {} around a %variable% (batch's guard against empty arguments): a
         # comparison must follow, as "if (%h) {" is Perl
         r"\bif\s+(?:/i\s+)?(?:not\s+)?[({]%[~\w]{1,40}%?[)}]\s*(?:==|\s(?:equ|neq|lss|leq|gtr|geq)\s)|"
         # two bracketed operands compared, then a command on the same line: no programming language
         # reads "if (a) == (b) echo"
         r"\bif\s+(?:not\s+)?(?:\([^()\n]{0,60}\)|\{[^{}\n]{0,60}\})\s*={2,3}\s*"
         r"(?:\([^()\n]{0,60}\)|\{[^{}\n]{0,60}\})[ \t]+(?!(?:then|and|or|return|else|is)\b)[a-z@(%!]|"
         rf"\bif\s+(?:not\s+)?{_BATCH_OPERAND}\s*(?:={{2,3}}\s*{_BATCH_OPERAND}\s+"
         r"(?!(?:then|and|or|return|else|is|it|we|you|i)\b)[a-z@(%!]|\s(?:equ|neq|lss|leq|gtr|geq)\s+\S)|"
         r"\bif\s+(?:not\s+)?\(.{0,80}?(?:\)\s*|\s)(?:equ|neq|lss|leq|gtr|geq)\s",
         ("if",),
         ("exist", "defined", "errorlevel", "cmdextversion", "/i", "%", "==", "equ", "neq", "lss", "leq",
          "gtr", "geq")),
    # Windows environment variables that only a command line expands: %comspec% /c, %systemroot%…
    Rule("rce.windows", 1, "lower",
         r"%(?:comspec|systemroot|windir|systemdrive|programfiles|programdata|appdata|localappdata|temp|"
         r"userprofile|username|userdomain|computername|homepath|homedrive|allusersprofile|public|"
         r"processor_\w+|logonserver|path|os|cd|random|errorlevel|cmdcmdline|date|time)%",
         ("%",)),
    # net.exe subcommands after a separator: & net user, | net localgroup administrators
    Rule("rce.windows", 1, "shell",
         rf"{_SEP_CHARS}\s*net1?(?:\.exe)?\s+(?:user|users|localgroup|group|view|use|share|start|stop|accounts|"
         r"config|session|time|file)\b", ("net", "net1"), (";", "|", "&", "`", "$(", "<(", ">(", "{")),
    # timing probes: ; sleep 5 / | timeout 10 / & ping -n 5 127.0.0.1 at the end of the value
    Rule("rce.command", 1, "shell",
         rf"{_SEP_CHARS}\s*(?:sleep|timeout)\s+\d+(?:\.\d+)?[smhd]?\s*(?:$|[;|&`#)])",
         ("sleep", "timeout"), (";", "|", "&", "`", "$(", "<(", ">(", "{")),
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
    # Brace expansion that builds a command or its options: {,ifconfig}, {l,-lh}s, {cat,/etc/passwd}.
    # A list of digits only is a regex quantifier ("\\d{1,3}"), not a command.
    Rule("rce.brace_expansion", 1, "lower", r"\{(?=[\w,./-]{0,80}\})(?![\d,]*\})[\w./-]*,[\w,./-]*\}",
         ("{",), (",",)),
    # A value that is only a separator and a command word: ;set  |env  `htop`
    Rule("rce.command", 1, "shell", rf"^[;|&`]+\s*(?:{_COMMANDS_T}|{_STRONG_T})\s*[;|&`]*$", _COMMAND_WORDS),
    # Any program with an option or an absolute path after a separator: ;foo -x, | foo --bar, && foo /a/b
    Rule("rce.command", 1, "shell",
         r"(?:;|\||&&|`|\$\()\s*[a-z][\w.+-]{1,30}\s+(?:-{1,2}[a-z][\w-]{0,20}(?:=\S*)?(?=\s|$|[;|&`)])|"
         r"/[\w.-]+/[\w.-])", (" -", " /"), (";", "|", "&&", "`", "$(")),
    # The value starts with ls or a versioned interpreter, and an argument: ls foo, python3.10 x.py
    Rule("rce.command", 1, "shell",
         r"^\s*(?:sudo\s+)?(?:ls|(?:python|perl|php|ruby|node|lua)\d[\d.]*)\s+[\w./~$*\"'-]",
         ("ls", "python", "perl", "php", "ruby", "node", "lua")),
    # A shell, an interpreter or a compiler with an option: what follows is code (sh -c, perl -e,
    # c99 -wrapper)
    Rule("rce.command", 1, "shell",
         rf"^\s*{_PREFIX}{_PATH}(?:sh|bash|ksh|zsh|csh|tcsh|dash|ash|busybox|(?:python|perl|php|ruby)[\d.]*|"
         r"node|lua|tclsh|c89|c99|gcc|cc|clang|awk|gawk|nawk|mawk|powershell|pwsh|cmd)(?:\.exe)?\s+[-/][a-z]",
         ("sh", "bash", "ksh", "zsh", "csh", "tcsh", "dash", "ash", "busybox", "python", "perl", "php",
          "ruby", "node", "lua", "tclsh", "c", "gcc", "cc", "clang", "awk", "gawk", "nawk", "mawk",
          "powershell", "pwsh", "cmd")),
    # --- paranoia 2 ---------------------------------------------------------------------------
    # ("&copy;" is an HTML entity, not "&" and the command "copy")
    Rule("rce.command", 2, "shell", rf"(?:[;|`]|&(?![a-z]{{2,8}};)|\$\(|\n)\s*(?:{_COMMON_T})(?=$|[;|&<>`)])",
         (';', '|', '&', '`', '$(', '\n')),
    Rule("rce.command", 2, "shell", rf"^\s*{_PREFIX}(?:{_DISTINCT_T})\s+\S"),
    Rule("rce.substitution", 2, "lower", r"\$\{[^}]{0,200}\}|`[^`]{1,80}`", ('${', '`')),
    Rule("rce.command", 2, "shell", rf"(?:^|\s)!(?:{_DISTINCT_T}){_END}", ('!',)),
    Rule("rce.fork_bomb", 2, "lower", r"(?<!\w)\w{1,40}\s*\(\s*\)\s*\{[^{}]{0,80}[|&][^{}]{0,80}\}", ('{',)),
    Rule("rce.brace_expansion", 2, "lower", r"\{\s*,\s*[$\"'/\w?]|\{[^{}\s]{1,80},\s*\}", ('{',)),
    Rule("rce.assignment", 2, "lower", r"(?<!\w)\w{1,40}=[^\s;]{0,80};\s*\$\w+", ('=',)),
    # mail protocol commands smuggled after a line break (SMTP, POP3, IMAP)
    Rule("rce.mail_command", 2, "lower",
         # commands that take no argument stand alone on their line ("data", not "data not found")
         r"[\r\n][ \t]{0,20}(?:(?:data|quit|rset|help(?:[ \t]+[a-z]+)?|noop|starttls|stat)[ \t]*(?:[\r\n]|$)|"
         r"(?:rcpt\s+to|mail\s+from)\s*:|(?:helo|ehlo|vrfy|expn|apop|retr|dele|uidl)\s+\S|"
         r"user\s+\S|pass\s+\S|list\s+\d|top\s+\d)|"
         r"[\r\n][ \t]{0,20}[a-z]?\d{1,4}\s+(?:login|select|examine|fetch|store|copy|append|status|list|lsub|"
         r"search|uid|"
         r"expunge|logout|capability|create|delete|rename|subscribe|authenticate|close|check|noop)\b",
         ('\r', '\n')),
    Rule("rce.shell_variable", 2, "lower", r"(?:^|[;|&\s])(?:\w+=[^\s;]{0,80};){3,}\s*\$\w+\$\w+", ('=',)),
)  # fmt: skip

_KEYWORDS = (
    "vi exist defined errorlevel cmdextversion equ neq lss leq gtr geq alias invoke start new object "
    "download system shell_exec passthru popen proc_open pcntl_exec execsync spawnsync subprocess runtime "
    "php cmd powershell jndi ifs shell bin usr local sbin dev tmp etc proc var root home passwd shadow"
)
# Words without which no rule of this family can match (see ``Inspector``'s screen): the
# names that are never anything but commands (split at "-", as the screen's tokenizer does) and
# batch, PowerShell and code-execution keywords. Other command names are screened by SCREEN_SHAPE:
# their rules also need a separator before them or an argument after them.
SCREEN_WORDS: frozenset[str] = frozenset(
    # the first word of each name is enough ("aa" for "aa-disable"): the screen's words split at "-"
    re.split(r"[^a-z0-9_]+", name)[0]
    for name in re.sub(r"\(\?:-\[a-z\]\+\)\?|\[[^\]]*\]\??|\\\+|\?|\\", "", _STRONG).split("|")
) | frozenset(_KEYWORDS.split())
