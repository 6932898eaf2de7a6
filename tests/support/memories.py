"""A small agent's memories of every kind, shared by the learning tests and benchmarks."""

from __future__ import annotations

# (kind, content, response): conversations carry a response, the other kinds stand alone.
FACTS = [
    ("conversation", "Who is Mira?", "Mira is your sister; she lives in Lisbon and plays the cello."),
    ("conversation", "What do I drink in the morning?", "Black coffee, no sugar, before eight."),
    ("conversation", "What is my cat called?", "Your cat is called Pepper and she is afraid of the vacuum."),
    ("conversation", "When is the concert?", "The concert is on Friday at seven in the old church."),
    ("reflection", "I was too hard on myself about the deadline.", None),
    ("dream", "A library where every book was a conversation.", None),
    ("journal", "Walked to the harbour, bought bread, called Mira.", None),
    ("inner_dialogue", "Maybe the garden can wait until the rain stops.", None),
    ("observation", "The 8:12 train is always late on Mondays.", None),
    ("conversation", "Where is the wifi password?", "It is written on the card under the lamp."),
]
