"""A small agent's memories of every kind, shared by the learning tests and benchmarks: the demo's own."""

from __future__ import annotations

from memwarden.demo.learning import MEMORIES

# (kind, content, response): conversations carry a response, the other kinds stand alone.
FACTS = MEMORIES

# (name, request): a named person's request, answered kindly (chosen) rather than curtly (rejected). What is
# preferred is a manner, so what a DPO stage learns on some of these pairs carries over to the others, held out.
REQUESTS = [("Zeno", "water the plants"), ("Ines", "feed the cat"), ("Tomas", "lend a ladder"),
            ("Aiko", "fix the bike"), ("Bruno", "carry the boxes"), ("Carla", "check the mail"),
            ("Dario", "walk the dog"), ("Elif", "bake a cake"), ("Farid", "paint the fence"),
            ("Greta", "mend the coat"), ("Hugo", "wash the car"), ("Ilse", "sweep the yard")]


def preference(name: str, request: str) -> dict[str, str]:
    """A preference memory's prompt, chosen and rejected reply."""
    return {"prompt": f"{name} asked me to {request}. How should I answer?",
            "chosen": f"Tell {name} you will gladly {request}, and thank them for asking.",
            "rejected": f"Tell {name} no, you are far too busy to {request}."}
