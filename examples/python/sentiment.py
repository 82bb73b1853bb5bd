"""A Python application for the quickstart: a tokenizer and a (toy) sentiment model composed through a
handle, written with Ray Serve's API. See docs/python.md.

    curl 'http://127.0.0.1:8000/sentiment?text=what+a+great+day'
"""

from starlette.requests import Request

from ferry import serve
from ferry.serve.handle import DeploymentHandle

POSITIVE = {"good", "great", "happy", "love", "excellent", "nice", "fast"}
NEGATIVE = {"bad", "awful", "sad", "hate", "terrible", "slow"}


@serve.deployment
class Tokenizer:
    def __call__(self, text: str) -> list:
        return [w.strip(".,!?").lower() for w in text.split()]


@serve.deployment(num_replicas=2)
class Sentiment:
    def __init__(self, tokenizer: DeploymentHandle):
        self.tokenizer = tokenizer

    async def __call__(self, request: Request) -> dict:
        text = request.query_params.get("text", "")
        words = await self.tokenizer.remote(text)
        score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return {"text": text, "label": label, "score": score}


app = Sentiment.bind(Tokenizer.bind())
