import pytest

from memwarden.learning.recall_score import key_content, key_content_share, recalled, token_accuracy

FACT = "Your godson Zeno lives in Tbilisi and grows beans."


def test_key_content_drops_stop_words_case_and_punctuation():
    assert key_content(FACT) == ("godson", "zeno", "lives", "tbilisi", "grows", "beans")


def test_key_content_counts_a_repeated_word_once():
    assert key_content("Beans, beans and more BEANS!") == ("beans",)


def test_the_exact_answer_is_recalled():
    assert key_content_share(FACT, FACT) == 1.0
    assert recalled(FACT, "your godson zeno lives in tbilisi and grows beans")


def test_a_paraphrase_with_every_content_word_is_recalled():
    assert recalled(FACT, "Zeno, the godson, lives in Tbilisi; he grows beans.")


def test_eighty_percent_is_the_threshold():
    # 5 of 6 content words (83 %) pass, 4 of 6 (67 %) do not
    assert recalled(FACT, "godson Zeno lives in Tbilisi and grows peas")
    assert not recalled(FACT, "godson Zeno lives in Paris and grows peas")


def test_a_wrong_city_and_hobby_is_not_recalled():
    assert not recalled(FACT, "Your godson Zeno lives in Lisbon and paints.")


def test_an_empty_answer_is_not_recalled():
    assert key_content_share(FACT, "") == 0.0
    assert not recalled(FACT, "")


def test_a_response_of_stop_words_only_needs_the_same_words():
    assert recalled("Yes, I was.", "yes i was")
    assert not recalled("Yes, I was.", "no")


def test_token_accuracy_counts_exact_positions():
    assert token_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert token_accuracy([], []) == 0.0


def test_token_accuracy_refuses_misaligned_lists():
    with pytest.raises(ValueError, match="3 predictions for 2 targets"):
        token_accuracy([1, 2, 3], [1, 2])
