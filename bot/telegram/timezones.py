"""What `/daily 09:00 …` takes for a time zone, and how a zone is shown back.

Accepted: an IANA name in any letter case ("europe/berlin"); its city alone where only one zone has it
("Berlin", "new york"); the cities and abbreviations people write in Russian ("Москва", "МСК", "Питер",
"Новосибирск"); a whole-hour offset ("UTC+5", "GMT-3", "+3", "МСК+4"), kept as the IANA zone Etc/GMT∓N and
shown as "UTC±N".
"""
from __future__ import annotations

import functools
import re
from zoneinfo import available_timezones

# Where people who write to the bot in Russian most often live, named as they write them.
RUSSIAN_NAMES = {
    "Europe/Moscow": ("москва", "мск", "msk", "санкт-петербург", "петербург", "питер", "спб", "казань",
                      "нижний-новгород", "ростов-на-дону", "краснодар", "сочи", "воронеж", "волгоград"),
    "Europe/Kaliningrad": ("калининград",),
    "Europe/Samara": ("самара", "ижевск"),
    "Asia/Yekaterinburg": ("екатеринбург", "челябинск", "пермь", "уфа", "тюмень"),
    "Asia/Omsk": ("омск",),
    "Asia/Novosibirsk": ("новосибирск",),
    "Asia/Krasnoyarsk": ("красноярск",),
    "Asia/Irkutsk": ("иркутск",),
    "Asia/Yakutsk": ("якутск",),
    "Asia/Vladivostok": ("владивосток", "хабаровск"),
    "Asia/Magadan": ("магадан",),
    "Asia/Kamchatka": ("камчатка", "петропавловск-камчатский"),
    "Europe/Minsk": ("минск",),
    "Europe/Kyiv": ("киев", "київ"),
    "Asia/Almaty": ("алматы", "алма-ата", "астана"),
    "Asia/Tashkent": ("ташкент",),
    "Asia/Bishkek": ("бишкек",),
    "Asia/Dushanbe": ("душанбе",),
    "Asia/Ashgabat": ("ашхабад",),
    "Asia/Tbilisi": ("тбилиси",),
    "Asia/Yerevan": ("ереван",),
    "Asia/Baku": ("баку",),
    "Europe/Chisinau": ("кишинев",),
    "Europe/Riga": ("рига",),
    "Europe/Tallinn": ("таллин", "таллинн"),
    "Europe/Vilnius": ("вильнюс",),
    "Asia/Jerusalem": ("израиль", "тель-авив", "иерусалим"),
    "Europe/Berlin": ("берлин", "германия"),
    "Europe/London": ("лондон",),
    "America/New_York": ("нью-йорк",),
}
_OFFSET = re.compile(r"(utc|gmt|мск|msk)?([+-])(\d{1,2})(?::?00)?")
_MOSCOW_HOURS = 3  # Moscow keeps UTC+3 all year


def parse_timezone(text: str) -> str | None:
    """The IANA name of the zone `text` names, or None."""
    key = _key(text)
    if not key:
        return None
    if key in ("utc", "gmt"):
        return "UTC"
    offset = _OFFSET.fullmatch(re.sub(r"\s+", "", text.lower().replace("−", "-")))
    if offset:
        base, sign, hours = offset.groups()
        total = (_MOSCOW_HOURS if base in ("мск", "msk") else 0) + (1 if sign == "+" else -1) * int(hours)
        if not -12 <= total <= 14:
            return None
        return "UTC" if total == 0 else f"Etc/GMT{-total:+d}"  # POSIX signs: Etc/GMT-5 is five hours east
    return _names().get(key)


def zone_label(name: str) -> str:
    """A zone as users read it: "UTC+5" for Etc/GMT-5 (whose sign is POSIX's, the other way round), else its name."""
    offset = re.fullmatch(r"Etc/GMT([+-]\d+)", name)
    return f"UTC{-int(offset.group(1)):+d}" if offset else name


def _key(text: str) -> str:
    return re.sub(r"[\s_]+", "-", text.strip().lower().replace("ё", "е"))


@functools.cache
def _names() -> dict[str, str]:
    zones = available_timezones()
    names: dict[str, str] = {}
    cities: dict[str, set[str]] = {}
    for zone in zones:
        names[_key(zone)] = zone
        cities.setdefault(_key(zone.rsplit("/", 1)[-1]), set()).add(zone)
    for city, holders in cities.items():
        if len(holders) == 1 and city not in names:
            names[city] = holders.pop()
    for zone, spellings in RUSSIAN_NAMES.items():
        if zone in zones:  # an old tzdata may lack one (Europe/Kyiv came in 2022)
            names.update(dict.fromkeys(spellings, zone))
    return names
