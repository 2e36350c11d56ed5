"""Request and response schemas of the policy service's typed route (shown in ``/docs``); the
OpenAI-compatible ones are in :mod:`services.policy.chat`."""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from services.edge import FieldValue, Text
from tagpr.config import TaskName


class AnswerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Optional[TaskName] = Field(None, description="the LaMP task (default: the stored user's)")
    input: Text = Field(min_length=1, description="the LaMP input: the question to answer for the user")
    user_id: Optional[Text] = Field(None, min_length=1, max_length=256, description="a user the service holds")
    profile: Optional[list[dict[Text, FieldValue]]] = Field(
        None, description="the user's profile items in LaMP's shape; stored under user_id when both are given")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0: greedy, as evaluation decodes")
    max_tokens: Optional[int] = Field(None, ge=1)


class Section(BaseModel):
    tag: str
    text: str


class AnswerResponse(BaseModel):
    answer: str = Field(description="the <answer> section, as evaluation reads it (empty when there is none)")
    reasoning: str = Field(description="the tagged reasoning before the answer")
    sections: list[Section]
    format_valid: bool = Field(description="the response parses and its answer is in the task's answer space")
    task: str
    model: str
    finish_reason: str
