"""Every user-facing string of the bot, in one place (Russian; the bot's audience reads Russian).

Texts are plain: they are sent without parse_mode, so nothing here (and nothing a user or the model
wrote) is ever parsed as HTML or Markdown.
"""
from __future__ import annotations

START = (
    "Привет! Я пишу анекдоты своими маленькими нейросетями.\n\n"
    "Напишите начало — например «Штирлиц пришел домой» — и я продолжу.\n"
    "Или отправьте /joke, и я начну сам."
)

HELP = (
    "Как пользоваться:\n"
    "• /joke Штирлиц пришел домой — анекдот с этого начала\n"
    "• /joke без текста — с классического начала\n"
    "• в личке можно просто написать начало анекдота\n"
    "• в группе: /joke@{bot_username} … или ответьте /joke на сообщение — возьму его текст\n"
    "• в группе: «@{bot_username} Штирлиц…» в сообщении или ответ на мой анекдот — начну новый с вашего текста\n"
    "• в любом чате: @{bot_username} Штирлиц пришел домой\n"
    "• /settings — длина анекдотов и фантазия для этого чата\n"
    "Под анекдотом: 🔁 Ещё — новый вариант, 👍 / 👎 — оценка."
)

# The command menu (setMyCommands): command -> description.
COMMANDS = {
    "joke": "Анекдот (можно с началом: /joke Штирлиц…)",
    "settings": "Настройки этого чата",
    "help": "Как пользоваться",
    "start": "Начать",
}
ADMIN_COMMANDS = {
    "model": "Модель: показать или переключить",
    "stats": "Статистика",
}

PLACEHOLDER = "✍️ Пишу анекдот…"
TYPING_SUFFIX = " ✍️"

PROMPT_TOO_LONG = "Слишком длинное начало: {length} символов, а можно не больше {limit}. Сократите, пожалуйста."
NOT_TEXT = "Я понимаю только текст. Напишите начало анекдота — например «Вовочка приходит в школу»."
UNKNOWN_COMMAND = "Такой команды нет. Напишите /joke или /help."
RATE_LIMITED = "Не так быстро 🙂 Следующий анекдот через {seconds} с."
WORKERS_DOWN = "😴 Генератор анекдотов сейчас не работает. Попробуйте через пару минут."
BUSY = "🥵 Очередь переполнена — слишком много желающих. Попробуйте через минуту."
TIMEOUT = "⌛ Не успел придумать анекдот вовремя. Попробуйте ещё раз."
FAILED = "😵 Что-то сломалось, анекдот не получился. Попробуйте ещё раз."
UNKNOWN_SIZE = "🤷 Эта модель сейчас недоступна. Попробуйте ещё раз чуть позже."
EMPTY_JOKE = "🤐 Модель промолчала. Попробуйте другое начало."
TEMPORARY_ERROR = "😵 Временная ошибка. Попробуйте ещё раз через минуту."

MORE_STARTED = "Пишу ещё один…"
JOKE_FORGOTTEN = "Этот анекдот уже забыт — напишите /joke."
BUTTON_EXPIRED = "Эта кнопка устарела — напишите /joke."
VOTE_NEW = "Спасибо за оценку {vote}!"
VOTE_CHANGED = "Оценка изменена на {vote}."
VOTE_SAME = "Вы уже поставили {vote}."

BUTTON_MORE = "🔁 Ещё"
BUTTON_UP = "👍"
BUTTON_DOWN = "👎"
BUTTON_WRITE = "✍️ Написать анекдот"

INLINE_HINT = "Напишите начало анекдота…"
INLINE_WORKERS_DOWN = "Генератор сейчас не работает 😴"
INLINE_RATE_LIMITED = "Не так быстро: ещё {seconds} с"
INLINE_TOO_LONG = "Слишком длинное начало (до {limit} символов)"
INLINE_BUSY = "Очередь переполнена, попробуйте позже"
INLINE_VARIANT_TITLE = "Анекдот №{number}"
INLINE_PENDING_TITLE = "✍️ Написать анекдот"
INLINE_PENDING_DESCRIPTION = "Отправьте — и я допишу его прямо в чате: {prompt}"

ADMIN_ONLY = "Извините, эта команда только для администраторов бота."
MODEL_STATUS = "Активная модель: {active}\nДоступны у воркеров: {available}\nПереключить: /model <размер>"
MODEL_SWITCHED = "✅ Модель переключена: {old} → {new}. Воркеры подхватят её со следующего пакета."
MODEL_UNKNOWN = "Нет такой модели: «{size}». Доступны: {available}."
MODEL_NONE_AVAILABLE = "нет (ни одного живого воркера)"

STATS = (
    "📊 Статистика\n"
    "Очередь: {queue}\n"
    "Живые воркеры: {workers}\n"
    "Активная модель: {active}\n"
    "Задержка: p50 {p50}, p95 {p95} (по {samples} анекдотам)\n"
    "Запросов всего: {requests}, тайм-аутов: {timeouts}\n"
    "{sizes}"
)
STATS_SIZE_LINE = "{size}: анекдотов {jokes}, 👍 {up}, 👎 {down}"
STATS_NO_SIZES = "Анекдотов пока не было."
STATS_NO_LATENCY = "—"


# /settings
SETTINGS = "⚙️ Настройки этого чата\nДлина анекдотов: {length}\nФантазия: {creativity}"
SETTINGS_SIZE_LINE = "\nМодель: {size}"
SETTINGS_HOW_GROUP = "\n\nМенять их могут администраторы чата — кнопками ниже."
SETTINGS_HOW_PRIVATE = "\n\nВыберите кнопками ниже."
SETTINGS_ADMINS_ONLY = "Менять настройки этого чата могут только его администраторы."
SETTINGS_ADMIN_UNKNOWN = "Не получилось проверить, администратор ли вы. Попробуйте через минуту."
SETTINGS_BAD_BUTTON = "Эта кнопка не работает. Откройте настройки заново: /settings"
SETTINGS_OTHER_CHAT = "Эта кнопка от настроек другого чата. Откройте настройки здесь: /settings"
SETTINGS_NOT_OFFERED = "Этот вариант сейчас недоступен. Откройте настройки заново: /settings"
SETTINGS_CHANGED = "✅ {setting}: {value}"
SETTING_CURRENT = "✓ "
SETTING_NAMES = {"length": "Длина", "creativity": "Фантазия", "size": "Модель"}
SETTING_VALUES = {
    "length": {"short": "Короткие", "normal": "Обычные", "long": "Длинные"},
    "creativity": {"calm": "Сдержанная", "normal": "Обычная", "wild": "Буйная"},
    "size": {"active": "Как у всех"},  # the concrete sizes show as their names (nano, mini, small)
}


def seconds(value: float) -> str:
    return f"{value:.1f} с"
