"""Write notebooks/russian_jokes_generator.ipynb (cells only, no outputs) from the sources below.

The notebook's text lives here so a change is a readable diff; `python scripts/run_notebook.py` then
executes it in place and stores the outputs. tests/test_notebook.py checks that the stored notebook's
cells are exactly these.

    python scripts/build_notebook.py && python scripts/run_notebook.py
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "russian_jokes_generator.ipynb"

CELLS: list[tuple[str, str]] = []  # (kind, source), kind is "md" or "code"


def md(source: str) -> None:
    CELLS.append(("md", textwrap.dedent(source).strip("\n")))


def code(source: str) -> None:
    CELLS.append(("code", textwrap.dedent(source).strip("\n")))


# ---------------------------------------------------------------------------------------------------
md("""
# Генератор русских анекдотов: от корпуса до генерации

Этот блокнот показывает проект `rujokes` изнутри, шаг за шагом и на его собственном коде
(`rujokes_model/` — модель, `trainer/` — обучение; внутри блокнота нет копии библиотеки, только
импорты и короткие поясняющие вычисления):

1. **Корпус** — сколько анекдотов, какой длины, как он делится на обучение и валидацию.
2. **Токенизатор** — byte-level BPE: как анекдот режется на токены при словаре 1024 / 2048 / 4096.
3. **Модель по частям** — RMSNorm, SwiGLU, RoPE и ALiBi, GQA и MHLA (и сколько памяти занимает кэш),
   прямой проход с формами тензоров.
4. **Обучение** — несколько минут обучения nano на CPU тренером проекта, кривая потерь, биты на символ;
   сравнение с готовыми (поставляемыми в пакете) nano и mini.
5. **Генерация** — жадный поиск, top-k, top-p, температура; ускорение от KV-кэша; батчи; потоковый вывод.
6. **Куда смотреть дальше** — бот, воркер, бенчмарки.

Весь блокнот выполняется сверху вниз на двухъядерном CPU не дольше 10 минут (≈ 6–7 минут на занятой
машине, где получены сохранённые выводы). Переменная окружения
`RUJOKES_NOTEBOOK_QUICK=1` включает быстрый режим (маленькие подвыборки, секунды обучения, короткая
генерация): так его за пару минут прогоняет CI (`tests/test_notebook.py`). Сохранённые выводы получены
полным прогоном: `python scripts/run_notebook.py`.
""")

md("""
## 0. Параметры

Все «ручки» блокнота собраны в одной ячейке. В быстром режиме они уменьшены так, чтобы весь блокнот
выполнялся за ≈ 2 минуты; числа в нём тогда лишь иллюстрация, а не результат.
""")

code('''
import os
from pathlib import Path

# До импорта torch: потоки OpenMP ждут работу не вращаясь, а засыпая. На общей машине, где ядра заняты
# и другими процессами, вращающиеся потоки теряют кванты времени, и генерация замедляется в разы.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

QUICK = os.environ.get("RUJOKES_NOTEBOOK_QUICK", "0").lower() not in ("", "0", "false", "no")

if QUICK:
    TOKENIZER_JOKES = 2_000    # на скольких анекдотах обучать токенизаторы (None — на всей обучающей части)
    TRAIN_JOKES = 3_000        # сколько анекдотов корпуса видит обучение nano (None — весь корпус)
    TRAIN_SECONDS = 12         # ограничение обучения по настенному времени, секунды
    EVAL_BATCHES = 1           # валидация во время обучения: столько пачек по 32 анекдота
    EVAL_EVERY = 10            # шагов между валидациями
    COMPARE_JOKES = 48         # на скольких валидационных анекдотах сравнивать модели
    NEW_TOKENS = 40            # длина примеров генерации, токены
    SPEED_TOKENS = 48          # длина замера скорости с кэшем и без
else:
    TOKENIZER_JOKES = None
    TRAIN_JOKES = None
    TRAIN_SECONDS = 180
    EVAL_BATCHES = 4
    EVAL_EVERY = 50
    COMPARE_JOKES = 300
    NEW_TOKENS = 120
    SPEED_TOKENS = 200

# Куда тренер пишет веса, метрики и карточку модели (runs/ не попадает в git).
RUN_DIR_OVERRIDE = os.environ.get("RUJOKES_NOTEBOOK_RUN_DIR")
print("режим:", "быстрый (RUJOKES_NOTEBOOK_QUICK=1)" if QUICK else "полный")
''')

code('''
import json
import math
import random
import re
import shutil
import threading
import time
import warnings
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display
from tqdm import TqdmWarning

# Прогресс-бары тренера здесь выключены; tqdm.auto всё равно предупреждает об отсутствии ipywidgets.
warnings.filterwarnings("ignore", category=TqdmWarning)
NOTEBOOK_STARTED = time.perf_counter()

# Корень репозитория — ближайшая папка с pyproject.toml (блокнот можно запускать из notebooks/ или из корня).
REPO = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())
RUN_DIR = Path(RUN_DIR_OVERRIDE) if RUN_DIR_OVERRIDE else REPO / "runs" / "notebook-nano"

# Картинки — PNG с умеренным разрешением: сохранённый блокнот остаётся маленьким и виден на GitHub.
%matplotlib inline
%config InlineBackend.figure_formats = ["png"]
plt.rcParams.update({"figure.dpi": 72, "figure.figsize": (9, 3.6), "axes.grid": True, "grid.alpha": 0.3,
                     "axes.spines.top": False, "axes.spines.right": False})

random.seed(0)
torch.manual_seed(0)
print(f"корень репозитория: {REPO.name}/ (блокнот запущен из {os.path.relpath(Path.cwd(), REPO)}/)")
print(f"torch {torch.__version__}, потоков для вычислений: {torch.get_num_threads()}")
''')

# ---------------------------------------------------------------------------------------------------
md("""
## 1. Корпус

Анекдоты не лежат в репозитории: корпус живёт рядом с ним, в `../shared/data/russian_jokes.jsonl`
(источники описаны в `../shared/data/SOURCES.md`). Тренер находит его сам: `trainer.data.DEFAULT_CORPUS`
вычисляется относительно папки репозитория. Формат — JSON Lines, по объекту `{"text": ...}` на строку.

`load_corpus` читает файл и **нормализует** каждый текст (NFC, без невидимых и управляющих символов,
обычные пробелы, не больше одной пустой строки подряд), затем **удаляет дубликаты**: два анекдота
считаются одинаковыми, если совпадают без учёта регистра, разницы «ё/е» и пробелов.
""")

code('''
from trainer.data import DEFAULT_CORPUS, dedupe_key, is_validation, load_corpus, read_jsonl, split_train_val

corpus_path = Path(DEFAULT_CORPUS)
expected = (REPO.parent / "shared" / "data" / "russian_jokes.jsonl").resolve()
print("DEFAULT_CORPUS =", os.path.relpath(corpus_path, REPO), "(относительно корня репозитория)")
print("совпадает с ../shared/data/russian_jokes.jsonl относительно репозитория:", corpus_path.resolve() == expected)
if not corpus_path.is_file():
    raise FileNotFoundError(f"нет корпуса {corpus_path}: положите russian_jokes.jsonl в ../shared/data/")

raw_texts = read_jsonl(corpus_path)       # как в файле
jokes = load_corpus(corpus_path)          # нормализованные, без пустых и повторов, в порядке файла
print(f"файл: {corpus_path.stat().st_size / 1e6:.1f} МБ, записей: {len(raw_texts):,}")
print(f"после нормализации и дедупликации: {len(jokes):,} анекдотов "
      f"(убрано {len(raw_texts) - len(jokes):,} повторов и пустых)")
''')

code('''
chars = np.array([len(j) for j in jokes])
words = np.array([len(j.split()) for j in jokes])
print(f"всего символов: {chars.sum():,}; слов: {words.sum():,}")
print("длина в символах: медиана {:.0f}, 90-й перцентиль {:.0f}, 99-й {:.0f}, максимум {:,}".format(
    np.median(chars), np.percentile(chars, 90), np.percentile(chars, 99), chars.max()))

opening_counts = Counter(" ".join(re.findall(r"\\w+", j)[:2]).lower() for j in jokes)  # два первых слова, без тире и знаков
top = opening_counts.most_common(14)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
ax1.hist(chars, bins=np.logspace(np.log10(max(chars.min(), 10)), np.log10(chars.max()), 60), color="C0")
ax1.set_xscale("log")
ax1.axvline(np.median(chars), color="C3", linestyle="--", label=f"медиана {np.median(chars):.0f}")
ax1.set(title="Длина анекдота", xlabel="символов (логарифмическая шкала)", ylabel="анекдотов")
ax1.legend()
ax2.barh([w for w, _ in top][::-1], [c for _, c in top][::-1], color="C2")
ax2.set(title="Самые частые зачины (два первых слова)", xlabel="анекдотов")
fig.tight_layout()
plt.show()
''')

md("""
Большинство анекдотов короткие — пара сотен символов; длинный хвост (рассказы на несколько тысяч
символов) модель увидит по кускам: контекст модели — 256 токенов. Частые зачины — жанровые формулы
(«Приходит мужик…», «Встречаются два…», «Что общего…», «Чем отличается…», «Поручик Ржевский…»):
из таких формул бот и выбирает начало, когда `/joke` приходит без текста.

Несколько анекдотов из корпуса (случайные, короче 300 символов):
""")

code('''
rng = random.Random(7)
for joke in rng.sample([j for j in jokes if len(j) < 300], 4):
    print(joke, end="\\n\\n———\\n\\n")
''')

md("""
### Деление на обучение и валидацию по хэшу

Валидационные анекдоты нельзя показывать модели при обучении, иначе оценка будет завышена. Проект делит
корпус **по хэшу самого текста**: `is_validation(text)` берёт BLAKE2b от соли и ключа дедупликации и
относит анекдот к валидации, если хэш попадает в первые 5 % диапазона. Отсюда три полезных свойства:

* принадлежность анекдота зависит только от него самого — не от порядка строк, не от размера файла,
  не от того, какие ещё анекдоты добавили в корпус;
* варианты одного анекдота, отличающиеся регистром, «ё/е» или пробелами, всегда оказываются на одной
  стороне (ключ дедупликации у них общий) — утечки почти-дубликатов в валидацию нет;
* любая подвыборка корпуса делится согласованно с полным корпусом: её валидация — часть полной валидации.
  Поэтому готовые модели, модель из этого блокнота и любые подвыборки оцениваются на одних и тех же
  «невиданных» анекдотах.
""")

code('''
train_jokes, val_jokes = split_train_val(jokes)   # val_fraction=0.05, соль "rujokes-v1" — как у тренера
print(f"обучение: {len(train_jokes):,}, валидация: {len(val_jokes):,} ({len(val_jokes) / len(jokes):.2%})")

sample = val_jokes[0]
variant = "  " + sample.upper().replace("Е", "Ё") + "  "
print("ключ дедупликации у варианта тот же:", dedupe_key(variant) == dedupe_key(sample),
      "| сторона та же:", is_validation(variant) == is_validation(sample))

shuffled = jokes[:]
random.Random(1).shuffle(shuffled)
print("после перемешивания корпуса валидация та же:", set(split_train_val(shuffled)[1]) == set(val_jokes))
subset_val = split_train_val(jokes[:3000])[1]
print(f"валидация первых 3000 анекдотов ({len(subset_val)} шт.) — часть полной:", set(subset_val) <= set(val_jokes))

fig, ax = plt.subplots(figsize=(7, 3.2))
bins = np.logspace(1, np.log10(chars.max()), 50)
ax.hist([len(j) for j in train_jokes], bins=bins, density=True, alpha=0.6, label="обучение")
ax.hist([len(j) for j in val_jokes], bins=bins, density=True, histtype="step", linewidth=2, label="валидация")
ax.set_xscale("log")
ax.set(title="Хэш не выбирает по длине: распределения совпадают", xlabel="символов", ylabel="плотность")
ax.legend()
plt.show()
''')

# ---------------------------------------------------------------------------------------------------
md("""
## 2. Токенизатор: byte-level BPE

Модель видит не буквы, а **токены** — номера кусочков текста из словаря фиксированного размера.
`ByteLevelBPETokenizer` (обёртка над 🤗 `tokenizers`) начинает с 256 «букв» — байтов UTF-8, поэтому
закодировать можно любую строку (кириллица занимает два байта на букву, эмодзи — четыре). Затем BPE
раз за разом склеивает самую частую пару соседних токенов в новый токен, пока словарь не наберёт нужный
размер. Три служебных токена: `<pad>`, `<bos>` (начало анекдота) и `<eos>` (конец).

Обучим три токенизатора на обучающей части корпуса — со словарём 1024, 2048 и 4096 токенов.
""")

code('''
from rujokes_model import ByteLevelBPETokenizer

tokenizer_texts = train_jokes if TOKENIZER_JOKES is None else train_jokes[:TOKENIZER_JOKES]
tokenizers = {}
for vocab in (1024, 2048, 4096):
    started = time.perf_counter()
    tokenizers[vocab] = ByteLevelBPETokenizer.train_from_iterator(tokenizer_texts, vocab_size=vocab)
    print(f"словарь {vocab}: обучен на {len(tokenizer_texts):,} анекдотах за {time.perf_counter() - started:.1f} с")
''')

md("""
Как один и тот же анекдот режется на токены. Границы токенов показаны знаком `|`; если токен
заканчивается посреди буквы (BPE работает с байтами, и редкая буква может не стать одним токеном),
такая буква видна дважды — в обоих токенах.
""")

code('''
def cut_into_tokens(tokenizer, text):
    """Куски исходного текста, соответствующие токенам (по смещениям, которые возвращает tokenizers)."""
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    return [text[start:end] for start, end in encoding.offsets]

example = "Приходит мужик к врачу и говорит: — Доктор, меня все игнорируют. — Следующий!"
print(example, "\\n")
for vocab, tokenizer in tokenizers.items():
    pieces = cut_into_tokens(tokenizer, example)
    print(f"{vocab:>5}: {len(pieces):>3} токенов | " + "|".join(pieces))
''')

md("""
Чем больше словарь, тем длиннее токены и короче последовательность: модель «видит» больше текста в
том же контексте, а каждый шаг генерации выдаёт больше символов. Платой служат параметры: матрица
эмбеддингов занимает `словарь × d_model` чисел, и для крошечной nano (`d_model` = 96) это заметная
доля модели. Проект выбрал 2048 измерением (BENCHMARKS.md): при равном времени обучения он лучше 1024
и не хуже 4096 при вдвое меньшей матрице эмбеддингов.
""")

code('''
from rujokes_model import ModelConfig, pretrained_path

measure = val_jokes[:2000]
measure_chars = sum(len(j) for j in measure)
nano_d_model = ModelConfig.preset("nano").d_model
rows = []
for vocab, tokenizer in tokenizers.items():
    n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(measure, add_bos=False))
    rows.append((vocab, measure_chars / n_tokens, vocab * nano_d_model))
bundled_tokenizer = ByteLevelBPETokenizer.from_pretrained(pretrained_path("nano"))
bundled_tokens = sum(len(ids) for ids in bundled_tokenizer.encode_batch(measure, add_bos=False))

display(Markdown("| словарь | символов на токен (валидация) | параметров эмбеддинга у nano |\\n|---|---|---|\\n"
                 + "\\n".join(f"| {v} | {cpt:.2f} | {emb:,} |" for v, cpt, emb in rows)
                 + f"\\n| 2048, готовый токенизатор nano/mini | {measure_chars / bundled_tokens:.2f} | "
                   f"{2048 * nano_d_model:,} |"))

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.bar([str(v) for v, _, _ in rows], [cpt for _, cpt, _ in rows], color=["C0", "C1", "C2"])
for i, (_, cpt, _) in enumerate(rows):
    ax.text(i, cpt + 0.03, f"{cpt:.2f}", ha="center")
ax.set(title="Сколько символов в среднем несёт токен", xlabel="размер словаря", ylabel="символов / токен")
plt.show()
''')

md("""
Самые длинные токены словаря 4096 — это целые частые слова и их сочетания с пробелом впереди
(в byte-level BPE пробел входит в начало слова):
""")

code('''
tokenizer = tokenizers[4096]
pieces = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
longest = sorted({p for p in pieces if "\\ufffd" not in p and p.strip()}, key=len, reverse=True)[:15]
print(" · ".join(repr(p) for p in longest))
''')

# ---------------------------------------------------------------------------------------------------
md("""
## 3. Модель по частям

`TransformerForCausalLM` — декодер-трансформер в стиле Llama: токены → эмбеддинги → `n_layer` блоков →
RMSNorm → логиты (матрица выхода общая с эмбеддингами). Каждый блок — **pre-norm**:

```
x = x + Attention(RMSNorm(x))
x = x + SwiGLU(RMSNorm(x))
```

Нормировка перед подблоком (а не после) оставляет «остаточный поток» `x` нетронутым, и градиенты идут
через все слои без затухания. Размеры трёх пресетов:
""")

code('''
from rujokes_model import SIZES, TransformerForCausalLM

fields = ["n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "position", "attention", "kv_lora_rank"]
lines = ["| пресет | " + " | ".join(fields) + " |", "|---" * (len(fields) + 1) + "|"]
for size in SIZES:
    config = ModelConfig.preset(size)
    lines.append(f"| {size} | " + " | ".join(str(getattr(config, f)) for f in fields) + " |")
display(Markdown("\\n".join(lines)))

nano = TransformerForCausalLM.from_pretrained(pretrained_path("nano")).eval()
nano_tokenizer = ByteLevelBPETokenizer.from_pretrained(pretrained_path("nano"))
print("готовая nano:", {k: v for k, v in nano.config.to_dict().items() if k in fields + ["vocab_size", "max_seq_len"]})
print(f"параметров: {nano.num_parameters():,}")
''')

md("""
Пресет — это архитектура «по умолчанию», а рецепт обучения может её менять: поставляемая nano обучена
с `attention="mhla"` (так решили замеры, `trainer/recipes.py`), поэтому у неё ALiBi + MHLA.

### RMSNorm

LayerNorm вычитает среднее и делит на стандартное отклонение. RMSNorm делает меньше: делит вектор на
его среднеквадратичное значение и умножает на обучаемый вес `g`:
$\\mathrm{RMSNorm}(x) = \\dfrac{x}{\\sqrt{\\tfrac1d\\sum_i x_i^2 + \\varepsilon}} \\odot g$.
Без вычитания среднего и без сдвига — дешевле, а качество то же. Проверим библиотечный слой против формулы:
""")

code('''
from rujokes_model.layers import RMSNorm, SwiGLU, alibi_slopes, rope_tables, rotate_pairs

norm = RMSNorm(8)
x = torch.randn(3, 8) * torch.tensor([[0.1], [1.0], [30.0]])     # три вектора очень разного масштаба
by_hand = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight
print("RMS до нормировки: ", x.pow(2).mean(-1).sqrt().numpy().round(3))
print("RMS после:          ", norm(x).pow(2).mean(-1).sqrt().detach().numpy().round(3))
print("совпадает с формулой:", torch.allclose(norm(x), by_hand, atol=1e-6))
''')

md("""
### SwiGLU

Полносвязный подблок: `down(silu(gate(x)) * up(x))`. Две проекции вверх: одна (`gate`) проходит через
SiLU и работает «затвором», поэлементно умножая вторую (`up`). Так сеть сама решает, какие признаки
пропустить. Чтобы параметров было столько же, сколько у классического MLP `d → 4d → d` с GELU, ширину
берут `8/3·d` (округлённо вверх до кратного 32): три матрицы `d × 8d/3` весят как две `d × 4d`.
В проекте `gate` и `up` — одна склеенная матрица `gate_up`: одно умножение вместо двух.
""")

code('''
from rujokes_model.config import swiglu_hidden

d = 96
ffn = SwiGLU(d, swiglu_hidden(d))
print(f"d_model={d}: ширина SwiGLU {swiglu_hidden(d)}, параметров {sum(p.numel() for p in ffn.parameters()):,}"
      f" против {2 * d * 4 * d:,} у MLP d→4d→d")
print("форма:", tuple(ffn(torch.randn(2, 5, d)).shape), "— вход и выход одной ширины")

z = torch.linspace(-5, 5, 400)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
ax1.plot(z, torch.relu(z), label="ReLU")
ax1.plot(z, torch.nn.functional.gelu(z), label="GELU")
ax1.plot(z, torch.nn.functional.silu(z), label="SiLU = z·σ(z)", linewidth=2)
ax1.set(title="Функции активации", xlabel="z")
ax1.legend()
for up in (0.5, 1.0, 2.0):
    ax2.plot(z, torch.nn.functional.silu(z) * up, label=f"up = {up}")
ax2.set(title="Выход SwiGLU: silu(gate) · up", xlabel="gate")
ax2.legend()
fig.tight_layout()
plt.show()
''')

md("""
### Позиции: RoPE и ALiBi

Внимание само по себе не знает порядка токенов. Проект поддерживает два способа его сообщить, и оба
кодируют **относительное** расстояние между токенами — то, что важно для языка.

**RoPE** (rotary position embedding) поворачивает пары координат запроса и ключа `(x₂ᵢ, x₂ᵢ₊₁)` на угол
`m·θᵢ`, где `m` — позиция, а частоты `θᵢ = 10000^(−2i/d)` идут от быстрых к очень медленным. Скалярное
произведение двух повёрнутых векторов зависит только от разности углов, то есть от `m − n`.

Слева — как быстрая (пара 1) и более медленная (пара 3) пары поворачиваются с позицией; в центре — косинусы
углов для всех пар (таблица `rope_tables`); справа — проверка относительности: оценка внимания `q·k`
как функция сдвига `m − n` одинакова, с какой бы абсолютной позиции ни начинать.
""")

code('''
dim, positions = 24, 64
cos, sin = rope_tables(dim, positions, theta=10000.0)            # (позиция, пара)
rotation = torch.complex(cos, sin)

fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for pair, color in ((1, "C0"), (3, "C1")):
    points = torch.view_as_real(rotation[:14, pair])           # вектор (1, 0), повёрнутый на позициях 0..13
    axes[0].plot(points[:, 0], points[:, 1], "o-", color=color, label=f"пара {pair}: θ = {float(rotation[1, pair].angle()):.2f} рад")
    for m in (0, 1, 2, 13):
        axes[0].annotate(str(m), points[m].numpy(), textcoords="offset points", xytext=(4, 4), color=color)
axes[0].set(title="Поворот пары с ростом позиции", aspect="equal", xlim=(-1.3, 1.3), ylim=(-1.3, 1.3))
axes[0].legend(loc="lower left")
image = axes[1].imshow(cos.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
axes[1].set(title="cos(m·θᵢ)", xlabel="позиция m", ylabel="пара i (частота убывает)")
fig.colorbar(image, ax=axes[1])

torch.manual_seed(0)
q, k = torch.randn(dim), torch.randn(dim)
rot = lambda v, m: rotate_pairs(v.view(1, 1, 1, dim), rotation[m].view(1, 1, -1))[0, 0, 0]
shifts = range(0, 40)
for start in (0, 20):
    axes[2].plot(list(shifts), [float(rot(q, start + s) @ rot(k, start)) for s in shifts],
                 "o" if start else "-", label=f"ключ на позиции {start}", markersize=4)
axes[2].set(title="q·k зависит только от m − n", xlabel="m − n")
axes[2].legend()
fig.tight_layout()
plt.show()
''')

md("""
**ALiBi** (attention with linear biases) ничего не поворачивает: к оценке внимания головы `h` просто
прибавляется штраф `−s_h · (m − n)`, линейный по расстоянию. Наклоны `s_h` — геометрическая прогрессия
(`alibi_slopes`): одни головы смотрят почти только на ближайшие токены, другие — далеко назад. Плюсы:
нет таблиц и нет жёсткой границы контекста — ALiBi-модель в принципе переносит и тексты длиннее
обучающих.
Выше диагонали — маска причинности: будущие токены не видны (`−∞`).
""")

code('''
slopes = alibi_slopes(4)                                          # у nano 4 головы
T = 12
distance = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).float()
bias = -slopes[:, None, None] * distance                          # (голова, запрос, ключ)
bias = bias.masked_fill(distance < 0, float("-inf"))
print("наклоны голов:", slopes.numpy().round(4))

fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
for ax, head in zip(axes[:2], (0, 3)):
    image = ax.imshow(bias[head], cmap="viridis", vmin=float(bias[head][torch.isfinite(bias[head])].min()), vmax=0)
    ax.set(title=f"смещения головы {head} (s = {slopes[head]:.3f})", xlabel="ключ n", ylabel="запрос m")
    fig.colorbar(image, ax=ax)
far = torch.arange(0, 64)
for head in range(4):
    axes[2].plot(far, -slopes[head] * far, label=f"голова {head}")
axes[2].set(title="Штраф по расстоянию", xlabel="m − n", ylabel="добавка к оценке")
axes[2].legend()
fig.tight_layout()
plt.show()
''')

md("""
### Внимание: GQA и MHLA — и сколько весит KV-кэш

При генерации модель запоминает ключи и значения всех прошлых токенов (**KV-кэш**), чтобы не считать их
заново. Кэш и есть главный расход памяти при обслуживании многих запросов сразу, поэтому варианты
внимания различаются прежде всего тем, что в нём хранится на каждый токен и слой:

* **MHA** — у каждой из `H` голов свои ключ и значение: `2·H·d_head` чисел;
* **GQA** (grouped-query) — несколько голов запроса делят одну пару ключ/значение: `2·KV·d_head`, где `KV < H`;
* **MHLA** (multi-head latent attention из DeepSeek-V2) — хранится только сжатый латентный вектор `c_kv`
  ширины `kv_lora_rank` и один общий для всех голов позиционный ключ: `kv_lora_rank + qk_rope_head_dim`.
  Ключи и значения голов восстанавливаются из латента матрицей `W_UK/W_UV`, а при декодировании эти
  матрицы «впитываются» в запрос и выход (absorbed form), так что внимание идёт прямо по латентам.

Посчитаем размер кэша не по формулам, а спросив сами слои: `new_cache` у слоя внимания выделяет ровно тот
буфер, который заполняет генерация.
""")

code('''
from rujokes_model.attention import GroupedQueryAttention, MultiHeadLatentAttention

def cache_numbers_per_token(config):
    """Сколько чисел кладёт в кэш один токен в одном слое (по буферам, которые выделяет слой)."""
    layer_cls = MultiHeadLatentAttention if config.attention == "mhla" else GroupedQueryAttention
    cache = layer_cls(config).new_cache(1, 1, torch.float32, torch.device("cpu"))
    buffers = [cache.entries] if config.attention == "mhla" else [cache.keys, cache.values]
    return sum(b.numel() for b in buffers)

table, chart = ["| пресет | внимание | чисел на токен и слой | КБ на токен (все слои, bf16) | МБ на 256 токенов × 8 запросов | доля от MHA |",
                "|---|---|---|---|---|---|"], {}
for size in SIZES:
    base = None
    for attention in ("mha", "gqa", "mhla"):
        config = ModelConfig.preset(size, attention=attention)
        per_layer = cache_numbers_per_token(config)
        kb = per_layer * config.n_layer * 2 / 1024
        base = base or kb
        chart[(size, attention)] = kb
        table.append(f"| {size} | {attention}{f' (KV={config.n_kv_head})' if attention == 'gqa' else ''} | "
                     f"{per_layer:,} | {kb:.2f} | {kb * 256 * 8 / 1024:.1f} | {kb / base:.0%} |")
display(Markdown("\\n".join(table)))

fig, ax = plt.subplots(figsize=(8, 3.4))
width = 0.27
for i, attention in enumerate(("mha", "gqa", "mhla")):
    values = [chart[(size, attention)] for size in SIZES]
    ax.bar(np.arange(len(SIZES)) + (i - 1) * width, values, width, label=attention.upper())
ax.set_xticks(range(len(SIZES)), SIZES)
ax.set_yscale("log")
ax.set(title="KV-кэш на один токен (все слои, bf16)", ylabel="КБ (логарифмическая шкала)")
ax.legend()
plt.show()
''')

md("""
У mini и small MHLA хранит примерно впятеро меньше, чем MHA, и в 2,5 раза меньше, чем GQA с вдвое меньшим
числом KV-голов: больше запросов в одном батче при той же памяти. У nano головы узкие (`d_head` = 24), и
латент на 48 чисел выигрывает меньше.

### Прямой проход: формы тензоров

Пропустим через готовую nano один зачин и распечатаем форму выхода каждого модуля (хуки на модули первого
блока и верхнего уровня). `B` — батч, `T` — токены, `d_model` = 96, словарь 2048.
""")

code('''
prompt = "Штирлиц пришел домой"
ids = torch.tensor([nano_tokenizer.encode(prompt)])             # <bos> + токены зачина
print("вход:", tuple(ids.shape), "=", ids[0].tolist())

shapes, hooks = [], []
for name, module in nano.named_modules():
    top_level = name and "." not in name
    first_block = name.startswith("blocks.0.") and name.count(".") <= 3
    if top_level or first_block:
        hooks.append(module.register_forward_hook(
            lambda module, args, output, name=name: shapes.append((name, type(module).__name__, tuple(output.shape)))))
with torch.no_grad():
    logits = nano(ids)
for hook in hooks:
    hook.remove()

display(Markdown("| модуль | тип | форма выхода |\\n|---|---|---|\\n"
                 + "\\n".join(f"| `{n}` | {t} | {s} |" for n, t, s in shapes)))
probs = logits[0, -1].softmax(-1)
best = probs.topk(5)
print("самые вероятные следующие токены:",
      ", ".join(f"{nano_tokenizer.decode([i])!r} {p:.2f}" for p, i in zip(best.values.tolist(), best.indices.tolist())))
''')

md("""
Видно, как работает MHLA: `wkv_a` сжимает 96-мерный вход в 48 чисел латента + 12 чисел общего
позиционного ключа (60), `wkv_b` разворачивает латент в ключи и значения всех голов
(4 головы × (24 + 24) = 192), `wq` даёт запросы (4 × (24 + 12) = 144). У ALiBi-модели эти 12 чисел
не поворачиваются (позицию сообщает смещение ALiBi) и работают просто как общий для всех голов кусок
ключа. Модель выдаёт логиты —
по числу на каждый токен словаря в каждой позиции; softmax последней позиции — распределение
следующего токена.

В кэш при этом попадают только латенты (по 60 чисел на токен и слой):
""")

code('''
cache = nano.new_cache(batch_size=1, max_len=ids.shape[1] + 8)
with torch.no_grad():
    nano(ids, cache=cache, start=0)
print(f"{type(cache[0]).__name__} × {len(cache)} слоя, буфер каждого слоя: {tuple(cache[0].entries.shape)}"
      f" = (батч, позиций, kv_lora_rank + qk_rope_head_dim)")
''')

# ---------------------------------------------------------------------------------------------------
md("""
## 4. Обучение nano на CPU

Тренер (`trainer.train.train`) делает всё сам: читает и делит корпус, обучает токенизатор (словарь 2048),
кодирует анекдоты как `<bos> анекдот <eos>` и **упаковывает** их встык в строки по 256 токенов.
Чтобы соседние анекдоты в строке не видели друг друга, у каждого токена есть номер документа: внимание
разрешено только внутри своего анекдота (и только назад), а позиции начинаются с нуля в каждом анекдоте.
Так на паддинг не тратится ни одного токена. Маска для одной упакованной строки:
""")

code('''
from trainer.packing import encode_documents, pack_documents

short = [j for j in train_jokes if len(j) < 45][:8]
packed = pack_documents(encode_documents(nano_tokenizer, short), seq_len=64)
docs, pos = packed.document_ids[0], packed.positions[0]
causal = torch.arange(len(docs))[None, :] <= torch.arange(len(docs))[:, None]
allowed = causal & (docs[:, None] == docs[None, :])              # та же маска, что строит модель из document_ids

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.6]})
ax1.imshow(allowed, cmap="Greys")
ax1.set(title="Кто кого видит в упакованной строке", xlabel="ключ", ylabel="запрос")
ax2.step(range(len(pos)), pos, where="mid", label="позиция в анекдоте")
ax2.step(range(len(docs)), docs * 5, where="mid", label="номер анекдота × 5")
ax2.set(title="Позиции начинаются заново в каждом анекдоте", xlabel="токен строки")
ax2.legend()
fig.tight_layout()
plt.show()
''')

md("""
Рецепт `recipe("nano")` — настройки, выбранные замерами (словарь 2048, lr 2e-3, MHLA, несколько эпох).
На CPU у нас есть лишь несколько минут, поэтому добавим `time_limit_s`: расписание скорости обучения
(разогрев, затем косинус) сжимается так, чтобы закончиться к сроку. И уменьшим батч до 8 строк по 128
токенов: за такое короткое время важнее число шагов оптимизатора, чем точность каждого шага (на этой
машине за минуту батч 8 × 128 дал 3.16 бит/символ, а рецептурный 32 × 256 — 3.67: при том же числе
токенов у него вчетверо-вдевятеро меньше шагов). Валидация — каждые `EVAL_EVERY` шагов
на части валидационных анекдотов; в конце тренер оставляет веса с лучшей валидацией, пишет
`metrics.jsonl`, `loss.png` и карточку модели `README.md`.

Обучение идёт в фоновом потоке, а эта ячейка раз в несколько секунд перечитывает `metrics.jsonl` и
перерисовывает график — кривая растёт вживую (в сохранённом блокноте виден её последний кадр).
""")

code('''
import logging

from trainer.recipes import recipe
from trainer.report import read_metrics
from trainer.train import train

# accelerate сообщает, что общий (tied) вес lm_head = embed сохранён один раз, — так и задумано.
logging.getLogger("accelerate").setLevel(logging.ERROR)

if TRAIN_JOKES is None:
    train_data = str(corpus_path)
else:
    # Быстрый режим: первые TRAIN_JOKES анекдотов корпуса отдельным файлом (тренер читает любой .jsonl).
    RUN_DIR.parent.mkdir(parents=True, exist_ok=True)
    train_data = str(RUN_DIR.parent / "notebook-subset.jsonl")
    with open(train_data, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"text": j}, ensure_ascii=False) + "\\n" for j in jokes[:TRAIN_JOKES])

config = recipe("nano", batch_size=8, seq_len=128, time_limit_s=TRAIN_SECONDS, eval_every=EVAL_EVERY,
                eval_batches=EVAL_BATCHES, checkpoint_every=10**9, card_sample_tokens=40)
print({k: v for k, v in config.to_dict().items() if k not in ("model_overrides",)}, config.model_overrides)


def plot_metrics(metrics):
    steps = [m["step"] for m in metrics]
    val = [m for m in metrics if "val_bpc" in m]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(steps, [m["train_loss"] for m in metrics], label="обучение", alpha=0.8)
    axes[0].plot([m["step"] for m in val], [m["val_loss"] for m in val], "o-", label="валидация")
    axes[0].set(title="Потери, нат/токен", xlabel="шаг")
    axes[0].legend()
    axes[1].plot([m["step"] for m in val], [m["val_bpc"] for m in val], "o-", color="C1")
    axes[1].set(title="Валидация, бит/символ", xlabel="шаг")
    axes[2].plot(steps, [m["lr"] for m in metrics], color="C2")
    axes[2].set(title=f"Скорость обучения (t = {metrics[-1]['wall_time_s']:.0f} с)", xlabel="шаг")
    fig.tight_layout()
    plt.close(fig)          # показываем через display-обновления, а не автоматически в конце ячейки
    return fig


def train_live(config, data, out_dir, refresh_s=5.0):
    """train() в фоновом потоке; пока он идёт, график из metrics.jsonl обновляется на месте."""
    shutil.rmtree(out_dir, ignore_errors=True)
    box = {}

    def run():
        try:
            box["result"] = train(config, data, out_dir, progress=False, cpu=True)
        except BaseException as error:       # ошибку поднимем в основном потоке
            box["error"] = error

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    handle = display(Markdown("*готовим корпус, токенизатор и упаковку…*"), display_id=True)
    while worker.is_alive():
        worker.join(refresh_s)
        try:
            metrics = read_metrics(out_dir)
        except (FileNotFoundError, ValueError):   # файла ещё нет или строка дописывается прямо сейчас
            continue
        if metrics:
            handle.update(plot_metrics(metrics))
    if "error" in box:
        raise box["error"]
    handle.update(plot_metrics(read_metrics(out_dir)))
    return box["result"]


result = train_live(config, train_data, RUN_DIR)
# Тренер рисует loss.png в файл и для этого переключает matplotlib на Agg; вернём встроенные картинки.
plt.switch_backend("module://matplotlib_inline.backend_inline")
print(f"шагов: {result.steps}, токенов: {result.tokens_seen:,}, время: {result.wall_time_s:.0f} с "
      f"({result.tokens_seen / result.wall_time_s:,.0f} токенов/с); веса с шага {result.selected_step}")
print("валидация:", {k: round(v, 3) for k, v in result.final_eval.items()})
print("в папке запуска:", sorted(p.name for p in RUN_DIR.iterdir()))
''')

md("""
**Биты на символ** (bits per character, bpc) — главная метрика проекта. Потери на токен зависят от
токенизатора: при длинных токенах каждый токен угадывать труднее, но их меньше. Поэтому тренер переводит
суммарные потери (натуральные логарифмы вероятностей всех токенов анекдота и `<eos>`) в биты и делит на
число символов текста. Так модели с разными словарями сравнимы: bpc — сколько бит в среднем нужно,
чтобы закодировать один символ анекдота, если предсказывает модель.

Для масштаба — модель без контекста, знающая только частоты символов (униграммы), и три модели:
наша свежеобученная nano и поставляемые в пакете nano и mini (обучены на GPU несколько эпох,
`scripts/train_gpu.py`). Все оцениваются `trainer.evaluate.evaluate_texts` на одних и тех же
валидационных анекдотах — у каждой свой токенизатор, но bpc это не мешает.
""")

code('''
from trainer.evaluate import evaluate_texts

compare_texts = val_jokes[:COMPARE_JOKES]
char_counts = Counter("".join(train_jokes))
total = sum(char_counts.values())
unigram_bits = -sum(math.log2((char_counts[c] + 1) / (total + len(char_counts))) for t in compare_texts for c in t)
unigram_bpc = unigram_bits / sum(len(t) for t in compare_texts)

mini = TransformerForCausalLM.from_pretrained(pretrained_path("mini")).eval()
mini_tokenizer = ByteLevelBPETokenizer.from_pretrained(pretrained_path("mini"))
models = {
    f"nano из блокнота ({result.wall_time_s / 60:.1f} мин CPU)": (result.model, result.tokenizer),
    "nano, поставляемая": (nano, nano_tokenizer),
    "mini, поставляемая": (mini, mini_tokenizer),
}
scores = {"частоты символов": unigram_bpc}
for name, (model, tokenizer) in models.items():
    started = time.perf_counter()
    evaluation = evaluate_texts(model, tokenizer, compare_texts)
    scores[name] = evaluation.bits_per_char
    print(f"{name:<36} {evaluation.bits_per_char:.3f} бит/символ, {evaluation.loss_per_token:.3f} нат/токен, "
          f"{model.num_parameters():>10,} параметров  ({time.perf_counter() - started:.1f} с)")
print(f"{'частоты символов (без контекста)':<36} {unigram_bpc:.3f} бит/символ")

fig, ax = plt.subplots(figsize=(8, 3.2))
names = list(scores)
ax.barh(names[::-1], [scores[n] for n in names][::-1], color=["C3", "C2", "C1", "C7"])
for i, n in enumerate(names[::-1]):
    ax.text(scores[n] + 0.03, i, f"{scores[n]:.2f}", va="center")
ax.set(title=f"Валидация: {len(compare_texts)} анекдотов, меньше — лучше", xlabel="бит на символ")
ax.set_xlim(0, max(scores.values()) * 1.15)
plt.show()
''')

md("""
Даже несколько минут на CPU дают модель намного лучше частот символов: она выучила частые слова,
пробелы, пунктуацию и форму диалога (реплики с тире). До поставляемых моделей ей далеко — те видели весь корпус по нескольку раз (nano: 2.25,
mini: 1.96 бит/символ на всей валидации). Вот что пишет наша nano:
""")

code('''
generator = torch.Generator().manual_seed(0)
for opening in ("Штирлиц пришел домой", "Вовочка"):
    ids = torch.tensor([result.tokenizer.encode(opening)])
    out = result.model.eval().generate(ids, NEW_TOKENS, eos_token_id=result.tokenizer.eos_token_id,
                                       top_k=10, generator=generator)
    print(result.tokenizer.decode(out[0].tolist()), end="\\n\\n")
''')

# ---------------------------------------------------------------------------------------------------
md("""
## 5. Генерация

Дальше — поставляемая mini (6 слоёв, RoPE + MHLA). `model.generate` один раз прогоняет зачин целиком
(prefill), а затем на каждом шаге подаёт один новый токен, обращаясь к KV-кэшу. На каждом шаге модель
даёт логиты следующего токена, и их надо превратить в выбор:

* **жадный поиск** (`do_sample=False`) — всегда самый вероятный токен: детерминированно, но быстро
  скатывается в повторы;
* **top-k** — случайный выбор среди `k` самых вероятных;
* **top-p** (nucleus) — среди наименьшего набора токенов с суммарной вероятностью ≥ `p`: набор сам
  сужается, когда модель уверена, и расширяется, когда нет;
* **температура** `T` делит логиты перед softmax: `T < 1` заостряет распределение, `T > 1` сглаживает.

Вот распределение первого токена после зачина и что от него оставляет каждый фильтр
(`rujokes_model.sampling.filter_logits`, та же функция, что работает внутри генерации):
""")

code('''
from rujokes_model.sampling import filter_logits

opening = "Штирлиц пришел домой"
opening_ids = torch.tensor([mini_tokenizer.encode(opening)])
with torch.no_grad():
    next_logits = mini(opening_ids)[:, -1]

top_n = 20
order = next_logits[0].argsort(descending=True)[:top_n]
labels = [repr(mini_tokenizer.decode([i])) for i in order.tolist()]
settings = {"T = 1": dict(), "T = 0.6": dict(temperature=0.6), "T = 1.5": dict(temperature=1.5),
            "top-k = 5": dict(top_k=5), "top-p = 0.9": dict(top_p=0.9)}
fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
for name in ("T = 0.6", "T = 1", "T = 1.5"):
    probs = filter_logits(next_logits, **settings[name]).softmax(-1)[0, order]
    axes[0].plot(range(top_n), probs, "o-", label=name)
axes[0].set(title="Температура: вероятности 20 лучших токенов", ylabel="вероятность")
axes[0].set_xticks(range(top_n), labels, rotation=70, fontsize=9)
axes[0].legend()
for shift, name in enumerate(("T = 1", "top-k = 5", "top-p = 0.9")):
    probs = filter_logits(next_logits, **settings[name]).softmax(-1)[0, order]
    axes[1].bar(np.arange(top_n) + (shift - 1) * 0.27, probs, 0.27, label=name)
axes[1].set(title="Что остаётся после фильтров (перенормировано)")
axes[1].set_xticks(range(top_n), labels, rotation=70, fontsize=9)
axes[1].legend()
fig.tight_layout()
plt.show()
''')

code('''
strategies = {
    "жадный": dict(do_sample=False),
    "top-k 10": dict(top_k=10),
    "top-p 0.9": dict(top_p=0.9),
    "T 0.7 + top-k 40": dict(temperature=0.7, top_k=40),
    "T 1.3 (без фильтров)": dict(temperature=1.3),
}
for name, sampling in strategies.items():
    generator = torch.Generator().manual_seed(42)                 # у всех способов одно и то же зерно
    out = mini.generate(opening_ids, NEW_TOKENS, eos_token_id=mini_tokenizer.eos_token_id,
                        pad_token_id=mini_tokenizer.pad_token_id, generator=generator, **sampling)
    print(f"[{name}]\\n{mini_tokenizer.decode(out[0].tolist())}\\n")
''')

md("""
Жадный поиск обычно начинает ходить по кругу, высокая температура без фильтров — уходит в бессмыслицу
(редкие токены из хвоста распределения), а top-k / top-p держат середину; бот по умолчанию берёт
top-k = 10 при T = 1 (`TOP_K` и `TEMPERATURE` в `.env`).

### Насколько ускоряет KV-кэш

Без кэша каждый новый токен требует полного прохода по всему тексту заново: шаг `t` стоит `O(t)`
(а внимание — `O(t²)`), и чем длиннее анекдот, тем медленнее. С кэшем шаг обрабатывает один токен,
а ключи и значения прошлых берёт из памяти. В `generate` есть ключ `use_cache=False` — именно такой
базовый вариант: на каждом шаге повторный полный прямой проход по зачину и всему сгенерированному.

Замерим время каждого шага (`iter_generate` отдаёт токены по одному) без `<eos>`, чтобы длина была
ровно `SPEED_TOKENS`, и жадно, чтобы оба варианта выдали одни и те же токены.
""")

code('''
from rujokes_model import iter_generate

def step_times(model, ids, n_tokens, use_cache):
    """Время каждого шага генерации (первый включает prefill) и сами токены."""
    times, tokens = [], []
    started = time.perf_counter()
    for _, step_tokens, _ in iter_generate(model, ids, n_tokens, do_sample=False, use_cache=use_cache):
        now = time.perf_counter()
        times.append(now - started)
        tokens.append(int(step_tokens[0]))
        started = now
    return np.array(times), tokens

speed = {}
for name, model, tokenizer in (("nano", nano, nano_tokenizer), ("mini", mini, mini_tokenizer)):
    ids = torch.tensor([tokenizer.encode(opening)])
    step_times(model, ids, 8, True)                               # разогрев
    cached, cached_tokens = step_times(model, ids, SPEED_TOKENS, use_cache=True)
    uncached, uncached_tokens = step_times(model, ids, SPEED_TOKENS, use_cache=False)
    speed[name] = (cached, uncached)
    print(f"{name}: с кэшем {SPEED_TOKENS / cached.sum():6.0f} токенов/с, без кэша {SPEED_TOKENS / uncached.sum():6.0f}"
          f" → ускорение {uncached.sum() / cached.sum():.1f}×; токены совпадают: {cached_tokens == uncached_tokens}")

fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
for i, (name, (cached, uncached)) in enumerate(speed.items()):
    axes[0].bar([i - 0.2, i + 0.2], [SPEED_TOKENS / cached.sum(), SPEED_TOKENS / uncached.sum()], 0.4,
                color=["C0", "C3"], label=["с кэшем", "без кэша"] if i == 0 else None)
    for x, value in ((i - 0.2, SPEED_TOKENS / cached.sum()), (i + 0.2, SPEED_TOKENS / uncached.sum())):
        axes[0].text(x, value, f"{value:.0f}", ha="center", va="bottom")
axes[0].set_xticks(range(len(speed)), list(speed))
axes[0].set(title=f"Скорость генерации, {SPEED_TOKENS} токенов, батч 1", ylabel="токенов/с")
axes[0].legend()
rolling_median = lambda t: np.array([np.median(t[max(0, i - 4):i + 1]) for i in range(len(t))])  # машина шумная
cached, uncached = speed["mini"]
axes[1].plot(range(2, SPEED_TOKENS + 1), rolling_median(uncached[1:]) * 1000, label="без кэша", color="C3")
axes[1].plot(range(2, SPEED_TOKENS + 1), rolling_median(cached[1:]) * 1000, label="с кэшем", color="C0")
axes[1].set(title="mini: шаг дорожает с длиной только без кэша", xlabel="номер токена",
            ylabel="мс на шаг (медиана 5 шагов)")
axes[1].legend()
fig.tight_layout()
plt.show()
''')

md("""
### Батчи

Воркер бота генерирует сразу для нескольких запросов: зачины разной длины дополняются паддингом
**слева** (тогда последний токен каждого зачина стоит в одном и том же столбце, и один шаг декодирования
обслуживает все строки), а `attention_mask` скрывает паддинг от внимания. `generate` сам переносит
паддинг влево, так что подать можно и как удобнее. Строка, выдавшая `<eos>`, дальше заполняется
`<pad>`, а закончившиеся строки покидают батч (`compact=True`), чтобы не тратить на них шаги.
""")

code('''
openings = ["Штирлиц пришел домой", "Вовочка", "Приходит мужик к врачу", "Встречаются два программиста",
            "Армянское радио спросили", "Купил мужик шляпу", "Сидит Петька", "Учительница спрашивает"]
encoded = [mini_tokenizer.encode(o) for o in openings]
width = max(len(e) for e in encoded)
batch_ids = torch.full((len(encoded), width), mini_tokenizer.pad_token_id)
attention_mask = torch.zeros(len(encoded), width, dtype=torch.long)
for row, e in enumerate(encoded):                                  # паддинг справа — generate перенесёт его влево
    batch_ids[row, :len(e)], attention_mask[row, :len(e)] = torch.tensor(e), 1
print("батч:", tuple(batch_ids.shape), "длины зачинов:", attention_mask.sum(-1).tolist())

generator = torch.Generator().manual_seed(1)
started = time.perf_counter()
out = mini.generate(batch_ids, NEW_TOKENS, attention_mask=attention_mask, eos_token_id=mini_tokenizer.eos_token_id,
                    pad_token_id=mini_tokenizer.pad_token_id, top_k=10, generator=generator)
print(f"{len(openings)} анекдотов за {time.perf_counter() - started:.1f} с\\n")
for row in out.tolist():
    print("•", mini_tokenizer.decode(row).replace("\\n", " "), end="\\n\\n")
''')

code('''
def tokens_per_second(batch):
    ids = batch_ids[:batch]
    started = time.perf_counter()
    mini.generate(ids, SPEED_TOKENS, attention_mask=attention_mask[:batch], do_sample=False)  # без eos: ровно SPEED_TOKENS
    return batch * SPEED_TOKENS / (time.perf_counter() - started)

batch_speed = {b: tokens_per_second(b) for b in (1, 2, 4, 8)}
print("mini, токенов/с по размеру батча:", {b: round(s) for b, s in batch_speed.items()})
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.bar([str(b) for b in batch_speed], list(batch_speed.values()), color="C0")
ax.set(title=f"Батч 8 даёт в {batch_speed[8] / batch_speed[1]:.1f} раза больше токенов/с, чем батч 1",
       xlabel="строк в батче", ylabel="токенов/с суммарно")
plt.show()
''')

md("""
### Потоковый вывод

Бот показывает анекдот по мере написания. `stream_text` отдаёт куски текста по одному шагу генерации.
Тонкость byte-level BPE: редкий символ (например, эмодзи — 4 байта UTF-8) может оказаться разрезан на
несколько токенов, и первый из них сам по себе не декодируется. `IncrementalDecoder` выпускает кусок,
только когда байты складываются в целые символы, поэтому пользователь никогда не увидит `�`.
""")

code('''
from rujokes_model import IncrementalDecoder, stream_text

pieces = []
print("Вовочка", end="")                                          # stream_text отдаёт только продолжение
for piece in stream_text(mini, mini_tokenizer, "Вовочка", max_new_tokens=NEW_TOKENS, top_k=10,
                         generator=torch.Generator().manual_seed(3)):
    pieces.append(piece)
    print(piece, end="", flush=True)
print(f"\\n\\n{len(pieces)} кусков: " + "|".join(pieces[:20]) + "|…")

decoder = IncrementalDecoder(mini_tokenizer)
emoji_ids = mini_tokenizer.encode("😂", add_bos=False)
print(f"\\n'😂' — это {len(emoji_ids)} токена: {emoji_ids}; после каждого decoder.push выдаёт:",
      [decoder.push(i) for i in emoji_ids])
''')

# ---------------------------------------------------------------------------------------------------
md("""
## 6. Куда смотреть дальше

* **Бот** — `bot/`: aiogram-бот (`bot/app.py`, обработчики в `bot/routers/`) кладёт запросы в Redis
  Streams, протокол и гарантии доставки описаны в `bot/protocol.py`. Запуск всего стека одной командой
  `rujokes run` (README, «Quick start»), развёртывание — `deploy/README.md`.
* **Воркер** — `bot/worker.py` и `bot/engine.py`: забирает запросы из очереди и генерирует их
  батчами с continuous batching (новые запросы подсаживаются в идущий батч между шагами, готовые
  отвечают сразу). Ускорения на CPU: `generate(..., compile=True)` и int8/bf16-веса
  (`rujokes_model/lowbit_weights.py`), включаются настройками `COMPILE_DECODE`, `CPU_INT8_SIZES`.
* **Обучение** — `rujokes-train --size nano` (или mini/small), оценка — `rujokes-eval --model runs/...`;
  все три размера на одном GPU за ≈ 5 минут — `python scripts/train_gpu.py`.
* **Бенчмарки** — `BENCHMARKS.md` и скрипты в `benchmarks/`: скорость генерации против 🤗
  `LlamaForCausalLM` (`generate_speed.py`), скорость обучения (`train_speed.py`), абляции при равном
  времени CPU (`train_ablation.py`), пропускная способность воркера (`worker_throughput.py`).
* **Этот блокнот** — ячейки пишет `scripts/build_notebook.py`, выполняет с сохранением выводов
  `python scripts/run_notebook.py`; `tests/test_notebook.py` прогоняет его в быстром режиме.
""")

code('''
print(f"блокнот выполнен за {(time.perf_counter() - NOTEBOOK_STARTED) / 60:.1f} мин ({'быстрый' if QUICK else 'полный'} режим)")
''')


def build() -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    for index, (kind, source) in enumerate(CELLS):
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        cell.id = f"cell-{index:02d}"  # stable ids: rebuilding gives the same file
        notebook.cells.append(cell)
    return notebook


def main() -> None:
    NOTEBOOK.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(build(), NOTEBOOK)
    print(f"wrote {NOTEBOOK.relative_to(ROOT)} ({len(CELLS)} cells, no outputs)")


if __name__ == "__main__":
    main()
