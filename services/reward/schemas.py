"""Request and response schemas of the reward service (shown in ``/docs``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from services.edge import FieldValue, Text
from tagpr.config import TaskName

if TYPE_CHECKING:
    from tagpr.rewards import RewardInput


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _item_fields(x: RewardInput) -> dict[str, Any]:
    """The HTTP edge of a :class:`tagpr.rewards.RewardInput`: the fields an item of either route takes
    from it (the prompt's id stays behind; a user_id only when set)."""
    p = x.prompt
    fields = {"task": p.task, "input": p.input, "response": x.response, "profile": [dict(i) for i in p.profile]}
    return fields | ({"user_id": p.user_id} if p.user_id else {})


class ScoreItem(Strict):
    task: TaskName
    input: Text = Field(min_length=1, description="the LaMP input the response answers")
    response: Text = Field(description="the full response; its <answer> is scored when it parses")
    profile: Optional[list[dict[Text, FieldValue]]] = Field(
        None, description="the user's profile items in LaMP's shape; cached under user_id when both are given")
    user_id: Optional[Text] = Field(None, min_length=1, max_length=256,
                                    description="a user whose profile an earlier request sent")

    @model_validator(mode="after")
    def _who(self) -> "ScoreItem":
        if self.profile is None and self.user_id is None:
            raise ValueError("give the user's profile, or a user_id whose profile was sent before")
        return self

    @classmethod
    def from_input(cls, x: RewardInput) -> "ScoreItem":
        return cls(**_item_fields(x))


class ScoreRequest(Strict):
    items: list[ScoreItem] = Field(min_length=1)


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description="raw PRMU scores, one per item (higher: more personalized)")
    model_version: str


class RewardItem(Strict):
    task: TaskName
    input: Text = Field("", description="the LaMP input; needed by stages that weight the PRMU")
    response: Text
    gold: Text = Field(min_length=1, description="the gold output the task metric compares against")
    profile: Optional[list[dict[Text, FieldValue]]] = None
    user_id: Optional[Text] = Field(None, min_length=1, max_length=256)

    @field_validator("gold")
    @classmethod
    def _scorable(cls, gold: str, info: ValidationInfo) -> str:
        """A rating task's gold must be a number, or the task metric cannot score against it."""
        from tagpr.lamp.metrics import gold_rating
        from tagpr.lamp.tasks import get_task

        task = info.data.get("task")
        if task is not None and get_task(task).task_type == "rating":
            gold_rating(gold)  # ValueError naming the value: a 422 on this field
        return gold

    @classmethod
    def from_input(cls, x: RewardInput) -> "RewardItem":
        return cls(**_item_fields(x), gold=x.prompt.gold)


class RewardRequest(Strict):
    stage: Optional[Text] = Field(None, description="RL stage whose weights apply (default: the first stage)")
    items: list[RewardItem] = Field(min_length=1)


class RewardValue(BaseModel):
    """One item's reward in a response body (:class:`tagpr.rewards.RewardResult` at the HTTP edge)."""

    reward: float
    components: dict[str, float]


class RewardResponse(BaseModel):
    stage: str
    results: list[RewardValue]
    model_version: Optional[str] = Field(None, description="PRMU version, when the stage used it")


class OpenRLHFRequest(BaseModel):
    """OpenRLHF's remote reward-model request (``--remote_rm_url``).

    Each label is a JSON object ``{"task", "gold", "input"?, "profile"?, "user_id"?}`` (as a value, or
    encoded in a string), or the plain gold string when the task is given as the ``task`` query
    parameter. Empty lists (a client with several URLs sends them to some) get empty lists back.
    """

    query: list[Text] = Field(description="prompt + response, decoded with special tokens kept")
    prompts: Optional[list[Text]] = None
    labels: Optional[list[Union[dict[str, Any], Text]]] = Field(
        None, description="the dataset's label per query: an object, a JSON-encoded object, or a plain gold")


class OpenRLHFResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


class ModelInfo(BaseModel):
    version: str
    variant: str
    encoder: str
    created: Optional[str] = None
    config: dict
    metrics: dict = Field(default_factory=dict)
