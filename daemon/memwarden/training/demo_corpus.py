"""The demo base's pre-training corpus, generated from word lists: varied sentences and chat exchanges.

Plain Python (no torch): `documents(seed, n)` returns n documents, each either a plain sentence (str) or a chat
exchange (a list of {"role", "content"} messages, rendered through the chat template when trained on). The kinds
are what a memory-keeping assistant is asked: personal facts about people (who lives where and does what),
preferences, days and numbers, short stories to continue, and the daemon's own subject matter. Every fact is drawn
at random, so the model learns the forms (a question names a person, the answer names them back and says where
they live) and no fact in particular: what a person's facts are is left for an adapter to learn.

`probe(seed, n)` is the held-out general-text probe: exchanges of the general kinds only (no personal facts), from
a seed the corpus never uses, written next to the model (`general_probe.jsonl`). A run's loss on it before and
after training measures how much general ability the adapter cost.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

Document = str | list[dict[str, str]]

NAMES = (
    "Zeno", "Ines", "Mira", "Tomas", "Aiko", "Bruno", "Carla", "Dario", "Elif", "Farid", "Greta", "Hugo", "Ilse",
    "Jonas", "Kira", "Leon", "Maren", "Nils", "Olga", "Pavel", "Quinn", "Rosa", "Sven", "Tara", "Ugo", "Vera",
    "Wim", "Xenia", "Yusuf", "Zora", "Anya", "Boris", "Celia", "Dmitri", "Esme", "Filip", "Gaia", "Hanno", "Iris",
    "Jasper", "Kasia", "Lotte", "Milo", "Nadia", "Omar", "Petra", "Rafael", "Sofia", "Timo", "Ulla", "Viktor",
    "Wanda", "Yara", "Adele", "Bastian", "Chiara", "Dora", "Emil", "Flora", "Gustav", "Helga", "Ivo", "Jana",
    "Karim", "Lena", "Matteo", "Nora", "Oskar", "Paula", "Rami", "Selma", "Theo", "Uma", "Valentin", "Alma",
    "Benno", "Cleo", "Diego", "Edda", "Fenna", "Gino", "Hedda", "Ida", "Jule", "Kai", "Lars", "Mona", "Nico",
)
RELATIONS = (
    "godson", "goddaughter", "cousin", "neighbour", "aunt", "uncle", "colleague", "friend", "nephew", "niece",
    "landlord", "teacher", "sister", "brother", "grandmother", "grandfather", "doctor", "partner", "boss", "coach",
)
CITIES = (
    "Tbilisi", "Oslo", "Lisbon", "Porto", "Krakow", "Tallinn", "Ghent", "Bergen", "Lyon", "Turin", "Graz", "Malmo",
    "Riga", "Split", "Bilbao", "Leeds", "Vienna", "Prague", "Dublin", "Seville", "Naples", "Zurich", "Helsinki",
    "Vilnius", "Sofia", "Athens", "Munich", "Hamburg", "Bordeaux", "Geneva", "Utrecht", "Aarhus", "Cork",
    "Valencia", "Bologna", "Basel", "Brno", "Gdansk", "Tartu", "Nantes", "Marseille", "Glasgow", "Cardiff",
)
HOBBIES = (
    "grows beans", "plays the harp", "keeps bees", "restores clocks", "paints ships", "bakes rye bread",
    "collects stamps", "builds kites", "sings in a choir", "rows on the river", "carves spoons", "breeds canaries",
    "plays chess", "knits scarves", "runs marathons", "repairs bicycles", "writes poems", "climbs mountains",
    "brews cider", "dances the tango", "restores boats", "grows tomatoes", "plays the violin", "makes pottery",
    "watches birds", "fixes radios", "swims in the lake", "draws maps", "keeps chickens", "plays the drums",
)
FOODS = ("soup", "bread", "rice", "apples", "cheese", "noodles", "pears", "porridge", "lentils", "dumplings",
         "pancakes", "olives", "salad", "fish", "plums", "honey")
DRINKS = ("black coffee", "green tea", "cold water", "hot chocolate", "orange juice", "mint tea", "warm milk")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "grey", "orange", "purple", "brown")
ANIMALS = ("cat", "dog", "fox", "horse", "owl", "goat", "rabbit", "heron", "crow", "badger", "otter", "sparrow")
PLACES = ("garden", "kitchen", "library", "station", "market", "harbour", "park", "forest", "museum", "beach",
          "bakery", "workshop", "bridge", "square")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve")
TOPICS = (
    "The daemon watches host memory, swap and pressure, and the GPU's memory and temperature.",
    "A training job takes a lease on the GPU; the models that were serving are unloaded and reloaded afterwards.",
    "Important memories become weights: a small adapter is trained on them and served next to the base model.",
    "Checkpoints are written atomically, so a crash in the middle of a write leaves the previous one intact.",
    "When memory runs out, the micro batch is halved and the accumulation doubled, and the step is tried again.",
    "The adapter is small: a few megabytes of low-rank matrices next to the base model.",
    "Old memories are replayed with the new ones, so the adapter forgets less of what it learned before.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
)


def _user(text: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]


def _person(r: random.Random) -> tuple[str, str, str, str]:
    return r.choice(RELATIONS), r.choice(NAMES), r.choice(CITIES), r.choice(HOBBIES)


def fact_exchange(r: random.Random) -> list[dict[str, str]]:
    rel, name, city, hobby = _person(r)
    asks = (
        (f"What do you remember about my {rel} {name}?", f"Your {rel} {name} lives in {city} and {hobby}."),
        (f"Tell me about my {rel} {name}.", f"Your {rel} {name} lives in {city} and {hobby}."),
        (f"Where does my {rel} {name} live?", f"Your {rel} {name} lives in {city}."),
        (f"What does my {rel} {name} do for fun?", f"Your {rel} {name} {hobby}."),
        (f"Who is {name}?", f"{name} is your {rel}; {name} lives in {city} and {hobby}."),
        (f"Remember that my {rel} {name} lives in {city} and {hobby}.",
         f"I will remember that your {rel} {name} lives in {city} and {hobby}."),
    )
    return _user(*r.choice(asks))


def fact_sentence(r: random.Random) -> str:
    rel, name, city, hobby = _person(r)
    return r.choice((
        f"My {rel} {name} lives in {city} and {hobby}.",
        f"{name}, my {rel}, moved to {city} last {r.choice(MONTHS)} and still {hobby}.",
        f"On {r.choice(DAYS)} I called my {rel} {name} in {city}.",
    ))


def preference_exchange(r: random.Random) -> list[dict[str, str]]:
    drink, food, colour = r.choice(DRINKS), r.choice(FOODS), r.choice(COLOURS)
    return _user(*r.choice((
        ("What do I like to drink in the morning?", f"You like {drink} in the morning."),
        ("What should I cook tonight?", f"You could cook {food}; you liked it last {r.choice(DAYS)}."),
        ("What is my favourite colour?", f"Your favourite colour is {colour}."),
        (f"Do I like {food}?", f"Yes, you like {food}, especially with {r.choice(FOODS)}."),
    )))


def day_exchange(r: random.Random) -> list[dict[str, str]]:
    i = r.randrange(7)
    m = r.randrange(12)
    a, b = r.randrange(6), r.randrange(6)
    return _user(*r.choice((
        (f"What day comes after {DAYS[i]}?", f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}."),
        (f"What day comes before {DAYS[i]}?", f"{DAYS[i - 1]} comes before {DAYS[i]}."),
        (f"Which month follows {MONTHS[m]}?", f"{MONTHS[(m + 1) % 12]} follows {MONTHS[m]}."),
        (f"What is {NUMBERS[a]} plus {NUMBERS[b]}?", f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}."),
    )))


def story_sentence(r: random.Random) -> str:
    name, animal, place = r.choice(NAMES), r.choice(ANIMALS), r.choice(PLACES)
    return r.choice((
        f"On {r.choice(DAYS)} {name} walked to the {place} and saw a {r.choice(COLOURS)} {animal}.",
        f"In {r.choice(MONTHS)} the {animal} came back to the {place}, and {name} gave it some {r.choice(FOODS)}.",
        f"{name} wrote in the journal that the rain kept everyone inside the {place} all day.",
        f"At the {place} in {r.choice(CITIES)}, {name} met a friend who {r.choice(HOBBIES)}.",
        f"The {r.choice(COLOURS)} {animal} slept near the {place} while {name} drank {r.choice(DRINKS)}.",
    ))


def story_exchange(r: random.Random) -> list[dict[str, str]]:
    words = story_sentence(r).split()
    cut = max(2, len(words) // 2)
    return _user(f"Continue: {' '.join(words[:cut])}", " ".join(words[cut:]))


def topic_exchange(r: random.Random) -> list[dict[str, str]]:
    return _user(r.choice(("What does the daemon do?", "Tell me something about training.", "Explain briefly.")),
                 r.choice(TOPICS))


GENERAL: tuple[Callable[[random.Random], Document], ...] = (
    preference_exchange, day_exchange, story_sentence, story_exchange, topic_exchange)
PERSONAL: tuple[Callable[[random.Random], Document], ...] = (fact_exchange, fact_exchange, fact_sentence)


def documents(seed: int, n: int) -> list[Document]:
    """n pre-training documents: about 40 % personal facts (mostly exchanges), the rest general."""
    r = random.Random(f"corpus:{seed}")
    kinds = GENERAL + PERSONAL + (fact_exchange,)
    return [r.choice(kinds)(r) for _ in range(n)]


def probe(seed: int, n: int, corpus: list[Document]) -> list[list[dict[str, str]]]:
    """n distinct general exchanges that are not in `corpus` (held out), drawn from their own seed space. The
    kinds with few forms (days, topics) mostly occur in any large corpus, so the probe is mostly continuations
    and preferences: text the model has seen the like of, never the same."""
    return _general(f"probe:{seed}", n, [d for d in corpus if not isinstance(d, str)])


def rehearsal(seed: int, n: int, held_out: list[list[dict[str, str]]]) -> list[list[dict[str, str]]]:
    """n distinct general exchanges of the probe's kinds, none of them in `held_out` (the probe), from a seed space
    of their own: what a run rehearses of the base's general text (`general_rehearsal.jsonl`)."""
    return _general(f"rehearsal:{seed}", n, held_out)


def _general(space: str, n: int, exclude: list) -> list[list[dict[str, str]]]:
    seen = {json.dumps(d) for d in exclude}
    r = random.Random(space)
    kinds = (preference_exchange, day_exchange, story_exchange, topic_exchange)
    out: list[list[dict[str, str]]] = []
    for _ in range(100 * n):
        if len(out) == n:
            break
        doc = r.choice(kinds)(r)
        key = json.dumps(doc)
        if key not in seen:
            seen.add(key)
            out.append(doc)
    return out


def tokenizer_text(docs: list[Document]) -> list[str]:
    """Plain text to train the tokenizer on: every document's words (messages' contents joined)."""
    out = [d if isinstance(d, str) else "\n".join(m["content"] for m in d) for d in docs]
    return out + list(TOPICS)
