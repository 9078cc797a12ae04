"""Password strength for admin accounts (P12), in the spirit of zxcvbn (Wheeler, USENIX Security 2016).

A password is refused when it is short, on the bundled list of the most common and breached passwords
(also after removing a trailing run of digits or symbols, and after undoing common "leet" swaps), built
from the account's own name or address, or made of keyboard rows, sequences or repeats. What is left is
scored by a rough guess count: the size of the character classes used, to the power of the length of what
is not a recognised pattern. The rules are deliberately few and explainable: the message says what to fix.

Passwords are hashed with argon2id (argon2-cffi) in :mod:`bastion.identity.admins`; nothing here stores or
logs them.
"""

from __future__ import annotations

import math
import re

__all__ = ["COMMON_PASSWORDS", "MIN_LENGTH", "PasswordTooWeak", "check_password_strength"]

MIN_LENGTH = 12
MAX_LENGTH = 256  # argon2 takes any length; a bound keeps a sign-in request from costing more than it should
MIN_GUESS_BITS = 50.0  # about 10^15 guesses: far beyond an online attack, hard for an offline one on argon2id


class PasswordTooWeak(ValueError):
    """The message says why, never echoing the password."""


# The head of the public lists (SecLists "10k most common", HIBP top Pwned Passwords, NCSC's 100k list),
# lower-cased. Compared after normalisation, so "Password123!" and "p@ssw0rd" are caught too.
_WORDS = """
123456 123456789 12345678 password qwerty123 qwerty1 111111 12345 secret 123123 1234567890 1234567
000000 qwerty abc123 password1 iloveyou 11111111 dragon monkey 123321 654321 666666 121212 superman
letmein football baseball welcome admin administrator login master hello freedom whatever qazwsx
trustno1 starwars sunshine princess shadow michael jennifer jordan hunter ashley charlie donald
password123 passw0rd p@ssword p@ssw0rd changeme default root toor guest test tester testing
welcome1 welcome123 admin123 admin1234 administrator1 letmein123 iloveyou1 qwertyuiop asdfghjkl
zxcvbnm 1q2w3e4r 1q2w3e4r5t 1qaz2wsx zaq12wsx q1w2e3r4 q1w2e3r4t5 qweasdzxc asdf1234 asdfasdf
mustang batman soccer hockey killer george summer winter spring autumn flower cookie chocolate
pepper ginger orange banana purple yellow silver golden diamond computer internet samsung
google apple microsoft linux ubuntu oracle mysql postgres database server security secure
bastion gateway api apikey token access private backup system manager support service company
pokemon naruto matrix ninja pass pass123 pass1234 mypassword yourpassword nopassword blahblah
loveme lovely lovers babygirl angel angels sweety buster tigger jessica thomas robert daniel
andrew joshua matthew anthony william soccer1 maggie ginger1 hannah amanda nicole jasmine
abcdef abcdefg abcdefgh abcd1234 aaaaaa aaaaaaaa zzzzzz 987654321 987654 112233 159753 147258369
123654 1111111111 0123456789 1234512345 123456a 123456abc a123456 abc12345 password12 password1234
passwordpassword letmeinnow trustnoone iloveyou2 princess1 sunshine1 football1 baseball1 monkey1
dragon1 master1 shadow1 superman1 michael1 jordan23 charlie1 qwerty12 qwerty1234 qwertyui
correcthorsebatterystaple correcthorse horsebattery opensesame secret123 secretpassword topsecret
welcomewelcome adminadmin rootroot testtest useruser user1234 user123 guest123 demo demo123
summer2024 winter2024 spring2024 autumn2024 summer2025 winter2025 spring2025 autumn2025
summer2026 winter2026 spring2026 autumn2026 january february march april june july august
september october november december monday tuesday wednesday thursday friday saturday sunday
"""
COMMON_PASSWORDS = frozenset(_WORDS.split())

_LEET = str.maketrans(
    {
        "@": "a",
        "4": "a",
        "3": "e",
        "1": "i",
        "!": "i",
        "0": "o",
        "$": "s",
        "5": "s",
        "7": "t",
        "+": "t",
        "8": "b",
        "9": "g",
    }
)
_ROWS = (
    "`1234567890-=",
    "qwertyuiop[]\\",
    "asdfghjkl;'",
    "zxcvbnm,./",
    "abcdefghijklmnopqrstuvwxyz",
    "0123456789",
)


def _variants(lowered: str) -> set[str]:
    stripped = re.sub(r"[\d\W_]+$", "", lowered)  # "password2024!" → "password"
    leet = lowered.translate(_LEET)
    return {lowered, stripped, leet, re.sub(r"[\d\W_]+$", "", leet), re.sub(r"[^a-z0-9]", "", leet)}


def _next(seq: str, a: str, b: str) -> bool:
    return seq.find(b) == seq.find(a) + 1


def _pattern_chars(lowered: str) -> int:
    """How many characters belong to repeats, sequences or keyboard runs of 3 or more."""
    covered = [False] * len(lowered)
    n = len(lowered)
    for i in range(n):
        # a repeated character or a repeated chunk ("aaaa", "abcabc")
        for size in range(1, min(8, n // 2) + 1):
            j = i + size
            while j + size <= n and lowered[j : j + size] == lowered[i : i + size]:
                j += size
            if j - i >= max(3, 2 * size) and j != i + size:
                for k in range(i, j):
                    covered[k] = True
        # runs along a keyboard row or the alphabet, either way
        for row in _ROWS:
            for seq in (row, row[::-1]):
                j = i
                while j + 1 < n and lowered[j] in seq and _next(seq, lowered[j], lowered[j + 1]):
                    j += 1
                if j - i + 1 >= 3:
                    for k in range(i, j + 1):
                        covered[k] = True
    return sum(covered)


def guess_bits(password: str) -> float:
    """log2 of a rough guess count: the alphabet of the classes used, over the characters that are not
    part of a recognised pattern (each pattern still costs a few bits)."""
    alphabet = 0
    if re.search(r"[a-z]", password):
        alphabet += 26
    if re.search(r"[A-Z]", password):
        alphabet += 26
    if re.search(r"\d", password):
        alphabet += 10
    if re.search(r"[^A-Za-z0-9]", password):
        alphabet += 33
    if any(ord(c) > 127 for c in password):
        alphabet += 100
    patterned = _pattern_chars(password.lower())
    free = len(password) - patterned
    return free * math.log2(max(alphabet, 2)) + patterned * 1.0


def check_password_strength(
    password: str, *, user_inputs: tuple[str, ...] = (), min_length: int = MIN_LENGTH
) -> None:
    """Raise :class:`PasswordTooWeak` saying what is wrong; return None for an acceptable password."""
    if len(password) < min_length:
        raise PasswordTooWeak(f"the password must have at least {min_length} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordTooWeak(f"the password must have at most {MAX_LENGTH} characters")
    lowered = password.lower()
    variants = _variants(lowered)
    if variants & COMMON_PASSWORDS or any(v and v * 2 in COMMON_PASSWORDS for v in variants):
        raise PasswordTooWeak("the password is on the list of common or breached passwords")
    for raw in user_inputs:
        for part in re.split(r"[@._\-+\s]+", raw.lower()):
            if len(part) >= 4 and any(part in v for v in variants):
                raise PasswordTooWeak("the password must not contain the account's name or address")
    # A common word with a little decoration around it ("MyPassword2024!") is still a common word.
    core = re.sub(r"[^a-z]", "", lowered.translate(_LEET))
    if any(word in core and len(word) >= 6 and len(core) - len(word) <= 4 for word in COMMON_PASSWORDS):
        raise PasswordTooWeak("the password is a common password with a few characters added")
    if guess_bits(password) < MIN_GUESS_BITS:
        raise PasswordTooWeak(
            "the password is too easy to guess (repeats, sequences or keyboard runs); "
            "use a longer passphrase of unrelated words"
        )
