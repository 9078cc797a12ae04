"""SQL injection (``sqli``).

Approach: an injected value has to *leave* the literal it was meant to be (a quote, a closing
parenthesis, or the end of a number) and then *say something* in SQL (an operator, a keyword, a
function call, a comment that cuts the rest of the query). The rules pair those two halves, so a
quote alone (``O'Reilly``) or a keyword alone (``select your plan``) never matches. They read the
``sql`` view: lower-cased, comments removed (``UN/**/ION`` stays split, ``UNION/**/SELECT`` becomes
``union select``), MySQL ``/*!50000 … */`` unwrapped, typographic quotes folded, whitespace collapsed.

Paranoia 1 holds shapes that are SQL by construction; paranoia 2 adds lone fragments (a bare
``lower(``, ``' union``, ``) as x from``) that appear in probes but also, rarely, in prose or code.
"""

from __future__ import annotations

from ._rules import Rule, keywords, trie

__all__ = ["CATALOG", "RULES", "SCREEN_WORDS"]

_Q = "['\"`]"
# Leaving a literal: a quote, a closing parenthesis, or a number.
# Written to start with a character class so the regex engine skips ahead to candidates: one of
# ``'"`)``, or a digit that starts a number (not preceded by a word character).
_BREAK = r"[\d'\"`)](?<!\w\d)\d*"
_BREAK_QUOTE = r"['\"`)]"
_BREAK_NUMBER = r"\d(?<!\w\d)\d*"
_BOOL = r"(?:\bor\b|\band\b|\bxor\b|\|\||&&)"
_CMP_WORDS = (
    r"(?:=|<=>|<>|!=|\blike\b|\brlike\b|\bregexp\b|\bsounds like\b|\bis\b|\bin\b|\bbetween\b|\bglob\b)"
)
_CMP = (
    r"(?:=|<=>|<>|!=|<=?|>=?|\blike\b|\brlike\b|\bregexp\b|\bsounds like\b|\bis\b|\bin\b|\bbetween\b|"
    r"\bglob\b)"
)
# Anchors (see ``Rule``): a boolean operator.
_BOOL_WORDS = ("or", "xor", "and", "||", "&&")
_QUOTES = ("'", '"', "`")
# Statements that can follow a stacked ";".
_STATEMENTS = (
    "select|insert|update|delete|drop|create|alter|truncate|exec|execute|declare|shutdown|waitfor|grant|"
    "revoke|set|use|begin|print|if|merge|call|load|handler|rename"
)
_CMP_ANCHORS = ("=", "<", ">", "like", "rlike", "regexp", "is", "in", "between", "glob")
# An operand is not empty: "' and = bar" compares nothing.
_OPERAND = rf"(?:{_Q}?[\w@.$-]+{_Q}?|{_Q}[\w@.$-]*{_Q}|\([^()]{{0,40}}\))"

# Functions that exist only in SQL dialects (or whose call syntax only appears in SQL): flagged
# with or without a space before "(".
_SQL_FUNCTIONS = (
    r"concat|concat_ws|group_concat|string_agg|nchar|chr|unhex|substr|substring|substring_index|load_file|"
    r"extractvalue|updatexml|make_set|find_in_set|strcmp|md5|sha1|sha2|xmltype|json_\w+|jsonb_\w+|"
    r"starts_with|unistr|lo_import|lo_export|lo_get|lo_from_bytea|current_user|system_user|session_user|"
    r"pg_\w+|utl_\w+|dbms_\w+|sys_context|name_const|benchmark|sleep|cot|asin|acos|atan|atan2|log10|log2|"
    r"instr|lpad|rpad|ltrim|rtrim|row_count|found_rows|last_insert_id|connection_id|isnull|ifnull|nullif|"
    r"coalesce|iif|xp_cmdshell|openrowset|opendatasource|geometrycollection|multipoint|linestring|ucase|"
    r"lcase|regexp_\w+|randomblob|zeroblob|load_extension|sqlite_version|gtid_subset|gtid_subtract|"
    r"octet_length|char_length|bit_length|db_name|object_id|object_name|col_name|has_dbaccess|"
    r"is_srvrolemember|suser_name|host_name"
)
# Functions named like ordinary words ("version", "degrees", "count"): flagged only when "("
# follows immediately, as in code, so "the new version (2.0)" stays quiet.
_WORD_FUNCTIONS = (
    r"user|lower|upper|left|right|count|max|min|avg|sum|length|round|floor|rand|replace|reverse|repeat|"
    r"space|position|insert|format|trim|cast|convert|if|case|date|time|year|month|day|now|default|local|"
    r"log|pi|abs|sign|mod|div|power|sqrt|values|field|quarter|week|second|minute|hour|char|ascii|hex|mid|"
    r"elt|version|database|decode|encode|sin|cos|tan|ln|radians|degrees|soundex|quote|ord|oct|conv|bin|"
    r"locate|uuid|schema|exp|ceil|ceiling|collation|charset|polygon|pow"
)

# System catalogues of MySQL, SQL Server, PostgreSQL, Oracle, SQLite and MS Access.
_CATALOG = (
    "information_schema|sysobjects|syscolumns|sysdatabases|sysusers|syscomments|sysprocesses|syslogins|"
    "sysfiles|sysaux|msysobjects|msysaccessobjects|msysaccessstorage|msysaccessxml|msysmodules|msysmodules2|"
    "msysqueries|msysrelationships|msysaces|msdb|tempdb|northwind|sqlite_master|sqlite_temp_master|"
    "sqlite_schema|sqlite_temp_schema|sqlite_sequence|pg_catalog|pg_toast|pg_shadow|pg_user|pg_database|"
    "pg_tables|pg_namespace|pg_proc|pg_authid|pg_roles|all_tables|user_tables|all_tab_columns|"
    "user_tab_columns|dba_users|dba_tables|all_users|user_objects|schema_name"
)
CATALOG = _CATALOG  # for the engine's screen
_CATALOG_T = trie(_CATALOG)
_TIME_WORDS = ("sleep", "pg_sleep", "benchmark")
_TIME_FUNCTION = r"(?:s(?<![\w.$]s)leep|p(?<![\w.$]p)g_sleep|b(?<![\w.$]b)enchmark)"
_SQL_FUNCTIONS_T, _WORD_FUNCTIONS_T = trie(_SQL_FUNCTIONS), trie(_WORD_FUNCTIONS)

RULES: tuple[Rule, ...] = (
    # ' or 1=1 / ") or ("a"="a / 1 and 2>1 / ' or x like y
    # After a number, "<" and ">" count only when written tight, as in code ("1 and 2>1"); with
    # spaces they are arithmetic prose ("1 < 2 and 3 > 2", "price >= 10 and price <= 20").
    Rule("sqli.tautology", 1, "sql",
         rf"{_BREAK_QUOTE}\s*{_BOOL}\s*(?:not\s+)?{_OPERAND}\s*{_CMP}\s*[\w'\"`(@-]",
         _BOOL_WORDS, _CMP_ANCHORS),
    Rule("sqli.tautology", 1, "sql",
         rf"{_BREAK_NUMBER}\s*{_BOOL}\s*(?:not\s+)?{_OPERAND}(?:\s*{_CMP_WORDS}|[<>]=?(?!\s))\s*[\w'\"`(@-]",
         _BOOL_WORDS, _CMP_ANCHORS),
    # ' or true-- / ' or 1# / " || (
    Rule("sqli.tautology", 1, "sql",
         rf"{_Q}\s*\)*\s*{_BOOL}\s*(?:true|false|null|not\b|\d+\s*(?:--|#|;|$)|\(|{_Q}?\s*\d+\s*{_Q}?\s*$)",
         _BOOL_WORDS),
    # 'x'='x  /  'x'!='y
    Rule("sqli.tautology", 1, "sql", rf"{_Q}[\w\s]{{0,40}}{_Q}\s*(?:=|!=|<>|<=>|like)\s*{_Q}",
         ('=', '<>', 'like')),
    # admin'-- / x')# / 1' ;--
    Rule("sqli.comment_cut", 1, "sql", rf"[\w)]{_Q}\s*\)*\s*(?:--|#|;\s*--)", ('--', '#'), _QUOTES),
    Rule("sqli.comment_cut", 1, "lower", r"/\*[!+]|/\*\s+\+", ('/*',)),
    # column-count probes: ' order by 3-- / ') group by 1#
    Rule("sqli.order_probe", 1, "sql", rf"{_Q}\s*\)*\s*(?:order|group)\s+by\s+\d+\s*(?:--|#|;|,|\)|$)",
         ("by",), _QUOTES),
    Rule("sqli.union", 1, "sql", r"\bunion\b(?:\s+(?:all|distinct))?\s*\(*\s*select\b", ('union',)),
    # select password from members / select 1,2,3 / select char( / (select
    Rule("sqli.select", 1, "sql",
         r"\bselect\b\s*(?:\*|\(|@@|(?:distinct\s+|top\s+\d+\s+)?[\w.`]+\s*(?:\(|,\s*[\w.`'\"(@]))",
         ('select',)),
    Rule("sqli.select", 1, "sql",
         r"\bselect\s+[\w.*@`]+(?:\s*,\s*[\w.*@`()']+){0,50}\s+from\s+[\w.`]+\s*"
         r"(?:$|;|--|#|\)|\bwhere\b|\border\b|\bgroup\b|\blimit\b|\bunion\b|\bhaving\b|\bjoin\b|\binto\b)",
         ('select',)),
    Rule("sqli.select", 1, "sql", r"\bselect\s+(?:\d+|null|sleep|pg_sleep|benchmark)\b", ('select',)),
    Rule("sqli.select", 1, "sql", r"\(\s*select\b\s*[\w*@(]", ('select',)),
    # quote/paren then ; then a statement: '; drop table users
    Rule("sqli.stacked", 1, "sql",
         rf"{_BREAK}\s*;\s*(?:{_STATEMENTS})\b", keywords(_STATEMENTS), (";",)),
    Rule("sqli.stacked", 1, "sql",
         r"[;/(]\s*(?:insert\s+into\s+[\w`.]+\s*(?:\(|values|select)|update\s+[\w`.]+\s+set\s+[\w`]+\s*=|"
         r"delete\s+from\s+[\w`.]+|(?:create|drop|alter|truncate|rename)\s+"
         r"(?:table|database|schema|user|view|index|function|procedure|trigger)\b|truncate\b\s*[\w\[])",
         ('insert', 'update', 'delete', 'create', 'drop', 'alter', 'truncate', 'rename')),
    # The same statements as a whole value need SQL around the words ("drop table lamp" is a search):
    # a column list or VALUES, SET x =, WHERE, IF EXISTS, a terminator, a comment or CASCADE.
    Rule("sqli.stacked", 1, "sql",
         r"^\s*(?:insert\s+into\s+[\w`.]+\s*(?:\(|values|select)|update\s+[\w`.]+\s+set\s+[\w`]+\s*=|"
         r"delete\s+from\s+[\w`.]+\s*(?:where\b|;|--|#)|(?:create|drop|alter|truncate|rename)\s+"
         r"(?:table|database|schema|user|view|index|function|procedure|trigger)\s+(?:if\s+(?:not\s+)?exists\b|"
         r"[\w`.\[\]]+\s*(?:;|--|#|\(|cascade\b|purge\b|add\b|drop\b|modify\b|rename\b|owner\b)))",
         ('insert', 'update', 'delete', 'create', 'drop', 'alter', 'truncate', 'rename')),
    Rule("sqli.exec", 1, "sql",
         r"\b(?:xp_cmdshell|xp_dirtree|xp_regread|xp_regwrite|xp_fileexist|xp_servicecontrol|sp_oacreate|"
         r"sp_executesql|sp_makewebtask|sp_password|sp_addlogin|sp_configure|openrowset|opendatasource)\b",
         ("xp_cmdshell", "xp_dirtree", "xp_regread", "xp_regwrite", "xp_fileexist", "xp_servicecontrol",
          "sp_oacreate", "sp_executesql", "sp_makewebtask", "sp_password", "sp_addlogin", "sp_configure",
          "openrowset", "opendatasource")),
    Rule("sqli.exec", 1, "sql",
         r"\bexec(?:ute)?\b\s*(?:master\.|\(\s*@|@\w|immediate\b|xp_|sp_)|\bdeclare\s+@\w|\bset\s+@\w+\s*=|"
         r"\bprocedure\s+analyse\s*\(|\binto\s+(?:out|dump)file\b|\bload\s+data\s+(?:local\s+)?infile\b",
         ('exec', 'execute', 'declare', 'set', 'procedure', 'into', 'load')),
    # Catalogue tables and system databases: named in a value, they are what an injection reads.
    Rule("sqli.schema", 1, "sql",
         rf"\b(?:{_CATALOG_T})\b|\bmysql\.(?:user|db)\b|\bsys\.(?:tables|objects|columns|databases|sql_logins|"
         r"database_name|schemas|all_\w+)\b|\bmaster\s?\.\.\s?sys\w+|"
         r"@@(?:version|datadir|hostname|basedir|tmpdir|servername|identity|language|spid)\b",
         (*keywords(_CATALOG), "mysql", "sys", "master", "@@")),
    Rule("sqli.time", 1, "sql",
         r"\bwaitfor\s+(?:delay|time)\b|\bdbms_lock\.sleep\b|\bdbms_pipe\.receive_message\b",
         ("waitfor", "dbms_lock", "dbms_pipe")),
    # sleep(5), pg_sleep(5), benchmark(…) called as code; each name starts the pattern (the check
    # that no word character precedes it comes right after its first letter), so the regex
    # engine skips ahead to candidate letters instead of trying every position
    # the call has an argument that SQL accepts: a number and ")" or ",", a variable, a call, a column
    Rule("sqli.time", 1, "sql",
         rf"{_TIME_FUNCTION}\(\s*(?:-?\d+(?:\.\d+)?\s*[),]|[@('\"]|[a-z_]\w*\s*[(),+*/-])",
         _TIME_WORDS, ("(",)),
    Rule("sqli.time", 1, "sql", rf"{_TIME_FUNCTION}\s*\(\s*\d+(?:\.\d+)?\s*\)", _TIME_WORDS, ("(",)),
    Rule("sqli.time", 1, "sql", r"[(,=|&'\"`]\s*(?:sleep|pg_sleep|benchmark)\b\s*\(", _TIME_WORDS, ("(",)),
    Rule("sqli.time", 1, "sql", r"\b(?:select|and|or)\s*(?:sleep|pg_sleep|benchmark)\b\s*\(", _TIME_WORDS,
         ("select", "and", "or")),
    # a call: "(" then an expression, ")" or the end of the value ("md5(/" is a path, not a call)
    Rule("sqli.function", 1, "sql",
         rf"(?<![\w$.])(?:{_SQL_FUNCTIONS_T})\s*[=\\]?\s*\((?!s\))(?=\s*(?:[\w@'\"(*`$+-]|\)|$))",
         keywords(_SQL_FUNCTIONS), ("(",)),
    Rule("sqli.function", 1, "sql", rf"(?<![\w$.-])(?:{_WORD_FUNCTIONS_T})[=\\]?\((?!s\))",
         keywords(_WORD_FUNCTIONS), ("(",)),
    Rule("sqli.function", 1, "sql", rf"^\s*(?:{_WORD_FUNCTIONS_T})\s*\($", keywords(_WORD_FUNCTIONS), ("(",)),
    # PostgreSQL casts: password::int, (x)::jsonb
    Rule("sqli.cast", 1, "sql",
         r"[\w)'\"]::(?:int|integer|bigint|smallint|text|varchar|numeric|double precision|jsonb?|bool|"
         r"boolean|"
         r"regclass|bytea|oid)\b", ('::',)),
    Rule("sqli.conditional", 1, "sql", r"\)\s*like\s*\(", ("like",), (")",)),
    Rule("sqli.conditional", 1, "sql", r"\bif\s*\(\s*[\w'\"@]+\s*[=<>!][^,()]{0,60},",
         ("if",), ("(",)),  # SQL's if(cond, a, b)
    Rule("sqli.conditional", 1, "sql", r"\bcase\s+when\b.{0,200}?\bthen\b|\bwhen\s+\d+\s+then\b",
         ("when",), ("then",)),
    Rule("sqli.conditional", 1, "sql",
         r"\bhaving\s+[\w`(]+\s*(?:[=<>]|like\b)|\bgroup\s+by\b.{0,200}?\bhaving\b", ("having",)),
    # ` as `alias` from / ) as x from: the tail of a column list
    Rule("sqli.select", 1, "sql", rf"{_BREAK}\s*as\s+[\w`'\"]+\s+from\b", ("from",), ("as",)),
    Rule("sqli.select", 1, "sql", r"`\s*(?:regexp|rlike|like)\b", ("regexp", "rlike", "like"), ("`",)),
    # a quote closing the literal and a statement terminator at the very end: admin';
    Rule("sqli.comment_cut", 1, "sql", r"[\w.]['\"`]\s*\)*\s*;\s*$", (";",), _QUOTES),
    # JSON literal compared with a JSON operator: '{"a":1}' -> '$.a' = 1, '{..}' ?| array[..]
    Rule("sqli.json", 1, "sql",
         r"'\s*[{\[][^']{0,200}[}\]]\s*'\s*(?:->>?|#>>?|\?[|&]?|@>|<@|[<>=])\s*['\w\[(]",
         ("'{", "' {", "'[", "' [")),
    # MySQL accepts "1.e" as a number glued to what follows: 1.e(ascii), 1.e.tables
    Rule("sqli.number_glue", 1, "sql", r"(?<![\w.])\d+\.e(?:\(|\.[a-z_])", ('.e(', '.e.')),
    # MongoDB operators used as keys or values: user[$ne]=, {"$where": ...}
    Rule("sqli.nosql", 1, "lower",
         r"(?:^|[\[{\"',\s.])\$(?:where|ne|eq|gt|gte|lt|lte|in|nin|regex|exists|elemmatch|text|nor|not|expr|"
         r"function|accumulator|jsonschema|size|all|mod)(?![\w$])", ('$',)),
    # Integer/float values known to overflow parsers (2^31, 2^32, 2^63, PHP's strtod loop).
    Rule("sqli.overflow", 1, "lower",
         r"(?<![\d.])(?:2147483648|4294967296|9223372036854775808|18446744073709551616|"
         r"2\.2250738585072011e-308|1e309)(?![\d.])",
         ('2147483648', '4294967296', '9223372036854775808', '18446744073709551616', 'e-308', '1e309')),
    # --- paranoia 2: fragments -------------------------------------------------------------
    Rule("sqli.tautology", 2, "sql", rf"{_Q}\s*(?:or|xor|and)\b\s*[\w'\"-]{{1,40}}\s*[<>=!]", _BOOL_WORDS),
    Rule("sqli.tautology", 2, "sql", r"(?:^|\s)x?or\s+\d+\s*[<>]", ('or', 'xor')),
    Rule("sqli.tautology", 2, "sql", r"\b\d+\s*!=\s*\d+\b", ('!=',)),
    Rule("sqli.function", 2, "sql", rf"(?<![\w$.])(?:{_WORD_FUNCTIONS_T})\s*[\W]{{0,3}}\((?!s\))",
         keywords(_WORD_FUNCTIONS),
         ("(",)),
    Rule("sqli.keyword", 2, "sql",
         rf"{_Q}\s*(?:union|alter|select|collate|having|group\s+by|order\s+by|procedure|into|from)\b|"
         r"\b(?:order|group)\s+by\s+(?:\d+|if\s*\(|[\w`]+\s*(?:,|--|#|$|asc|desc|limit))|"
         r"\blimit\s+\d+\s*(?:,|offset)\s*\d+|"
         r"\bin\s*\(\s*select\b|"
         r"\bexecute\s+\w|\blike\s+null\b|\bis\s+not\s+null\b|\bnotnull\b|\bcollate\b|"
         r"\b(?:and|or)\s+[\w(]+\s*(?:!=|=|<>)\s*(?:['\"(]|\d+\s*=)|\b(?:and|or)\s+\d+\s*=\s*\(|"
         r"(?:^|\s)in\s*\(\s*[\w'\"-]+\s*,|\bdrop\s+\w+\s*;",
         ("union", "alter", "select", "collate", "having", "group", "order", "procedure", "into", "from",
          "limit", "execute", "null", "notnull", "and", "or", "in", "drop")),
    Rule("sqli.comment_cut", 2, "sql", rf"{_Q}\s*(?:;|--|#)|;\s*--|--\s*-?$", (';', '--', '#')),
    Rule("sqli.comment_cut", 2, "lower", r"[a-z]\s*/\*.{0,200}?\*/\s*[a-z]", ('/*',)),
    # bare operators and chained conditions, as probes send them
    Rule("sqli.operator", 2, "sql",
         r"^\s*(?:!=|<=>|<>|>=|<=|==|xor\b|is\s+(?:not\s+)?null\b|in\s*\(\s*$)|"
         r"(?:&&|\|\||\band\b|\bor\b)\s*\(?\s*[\w@]+\s*(?:!?==?|!=|<>|=\s*!?\s*\d|=\s*['\"(])|"
         r"\b\d+(?:or|and|xor)\d+|\b\d+\s+(?:or|and|xor)\s+\d+\s*[-+*/=<>]|"
         rf"\w{_Q}\s*(?:or|and|xor)\s*{_Q}\w|{_Q}\s*(?:union|select)\s*$",
         ('!=', '<>', '>=', '<=', '==', 'xor', 'null', 'in', '&&', '||', 'and', 'or', 'union', 'select')),
    Rule("sqli.stacked", 2, "sql",
         r";\s*(?:update|drop|delete|insert|alter|create)\b|(?:^|\s|;)set\s+@@?\w|=\s*\(\s*select\b|"
         r"--\s?(?:alter|drop|select|union|update|delete|insert)\b|\b(?:order|group)\s+by\s*$|"
         r"\bfrom\s+[\w`.]+\s+(?:group|order)\s+by\b|\bexec(?:ute)?\s*\(",
         (';', 'set', 'select', '--', 'by', 'exec', 'execute')),
    Rule("sqli.hex", 2, "sql", r"(?:^|[\s(,=\\])0x[0-9a-f]{4,}|\bx'[0-9a-f]{8,}'|\\x(?:23|27|3d)",
         ('0x', "x'", '\\x')),
)  # fmt: skip

# Words without which no rule of this family can match (see ``Inspector``'s screen).
_SCREEN_TEXT = (
    "or and xor div select union insert into update delete drop create alter truncate rename exec execute "
    "declare set waitfor delay sleep benchmark information_schema sysobjects syscolumns sysdatabases "
    "sysusers "
    "msysobjects msysaccessobjects sqlite_master sqlite_schema all_tables user_tables all_tab_columns "
    "dba_users user_objects mysql sys having case when then group order limit procedure analyse load data "
    "infile outfile dumpfile notnull collate regexp rlike glob shutdown grant revoke "
    "merge handler xp_cmdshell xp_dirtree openrowset opendatasource immediate master"
)
SCREEN_WORDS: frozenset[str] = frozenset(_SCREEN_TEXT.split()) | frozenset(_CATALOG.split("|"))
