"""Sentiment of live comments with vaderSentiment (its lexicon ships with the package).

Replies to each comment with `live.result.sentiment`: VADER's compound score (-1 to 1) and a label."""
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from cloudevent_function import serve

ANALYZER = SentimentIntensityAnalyzer()


def handle(attrs, data):
    score = ANALYZER.polarity_scores(str(data["text"]))["compound"]
    label = "positive" if score >= 0.05 else "negative" if score <= -0.05 else "neutral"
    return "live.result.sentiment", {
        "comment_id": data["id"],
        "stream": data.get("stream"),
        "sent_at": data.get("sent_at"),
        "score": score,
        "label": label,
    }


serve(handle, "/functions/sentiment")
