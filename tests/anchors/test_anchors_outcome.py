"""The outcome check: activities without a measurable change are flagged, outcomes are not."""

from __future__ import annotations

import msgspec
import pytest

from anchors import OutcomeCheck, check_outcome


@pytest.mark.parametrize(
    ("description", "triggers"),
    [
        ("Launch the partner portal", ("Launch",)),
        ("Complete the SOC 2 audit", ("Complete",)),
        ("Run 5 customer workshops over 3 months", ("Run",)),
        ("Run 5 customer workshops over 30 days", ("Run",)),
        ("Deliver the new billing system", ("Deliver",)),
        ("Ship v2 of the mobile app by Q3", ("Ship",)),
        ("Hold a quarterly all-hands", ("Hold",)),
        ("Organise the customer advisory board", ("Organise",)),
        ("Organize a hackathon", ("Organize",)),
        ("Write 12 blog posts", ("Write",)),
        ("Create a pricing page", ("Create",)),
        ("Build the data warehouse", ("Build",)),
        ("Implement SSO", ("Implement",)),
        ("Host two webinars", ("Host",)),
        ("Attend 3 industry conferences", ("Attend",)),
        ("Conduct 20 user interviews", ("Conduct",)),
        ("Publish the Q3 roadmap", ("Publish",)),
        ("Hire 3 senior engineers", ("Hire",)),
        ("Launch in 3 countries", ("Launch",)),
        ("Set up the on-call rotation", ("Set up",)),
        ("Roll out SSO to all customers", ("Roll out",)),
        ("We will successfully launch the referral programme", ("launch",)),
        ("Successfully launched the new pricing page", ("launched",)),
        ("Migration to Postgres completed by end of Q3", ("completed",)),
        ("Design and launch the referral programme", ("Design", "launch")),
        ("Launch the app; hire 3 engineers", ("Launch", "hire")),
        ("Increase revenue and launch the partner programme", ("launch",)),
        ("  - Launch the partner portal  ", ("Launch",)),
    ],
)
def test_activities_without_a_measurable_change_are_flagged(
    description: str, triggers: tuple[str, ...]
):
    check = check_outcome(description)
    assert check.is_output, check.reasons
    assert check.triggers == triggers
    assert check.measurable_changes == ()
    for word in triggers:
        assert word in " ".join(check.reasons)
    assert check.suggestion is not None
    assert "from X to Y" in check.suggestion
    assert triggers[0] in check.suggestion


@pytest.mark.parametrize(
    ("description", "change"),
    [
        ("Increase activation from 20% to 35% by launching onboarding", "from 20% to 35%"),
        ("Increase weekly active teams from 1,200 to 2,000", "from 1,200 to 2,000"),
        ("Increase NPS to 45", "NPS to 45"),
        ("Reduce monthly churn below 3%", "below 3%"),
        ("Grow ARR by 20%", "20%"),
        ("Grow ARR by $2M", "$2M"),
        ("Cut cloud spend from $120k to $90k per month", "from $120k to $90k"),
        ("Keep p95 latency under 200 ms", "under 200"),
        ("Uptime at least 99.9%", "at least 99.9%"),
        ("Reach 10,000 paying customers", "Reach 10,000"),
        ("Double weekly active users", "Double"),
        ("Lift conversion 2x", "2x"),
        ("Conversion 2.1% -> 2.6%", "2.1% -> 2.6%"),
        ("Support tickets per 1k orders ≤ 4", "≤ 4"),
        ("Ship the new checkout and lift conversion from 2.1% to 2.6%", "from 2.1% to 2.6%"),
        ("Lower time to first response to 2 hours", "to 2"),
    ],
)
def test_measurable_changes_are_outcomes(description: str, change: str):
    check = check_outcome(description)
    assert not check.is_output, check.reasons
    assert any(change in fragment for fragment in check.measurable_changes), (
        check.measurable_changes
    )
    assert check.suggestion is None
    assert any("measurable change" in r for r in check.reasons)


def test_activity_as_the_means_to_an_outcome_is_not_a_trigger():
    check = check_outcome("Increase activation from 20% to 35% by launching onboarding")
    assert check.triggers == ()
    # Even without a number, the means phrase is not read as the KR's activity.
    assert (
        check_outcome("Improve activation by launching onboarding and running webinars").triggers
        == ()
    )


def test_activity_alongside_a_measurable_change_is_reported_but_not_flagged():
    check = check_outcome("Ship the new checkout and lift conversion from 2.1% to 2.6%")
    assert check.triggers == ("Ship",)
    assert not check.is_output
    assert any("means" in r for r in check.reasons)


@pytest.mark.parametrize(
    "description",
    [
        "Increase attendance at the product launch",  # a noun, not an activity
        "Launch of the new app is celebrated",  # "launch of" is a noun phrase
        "Reduce test flakiness",
        "Better customer experience",
        "Improve the dry run",
    ],
)
def test_vague_descriptions_without_activity_verbs_are_not_flagged(description: str):
    check = check_outcome(description)
    assert not check.is_output
    assert check.triggers == ()
    assert check.measurable_changes == ()
    assert any("no measurable change" in r for r in check.reasons)
    assert check.suggestion is not None
    assert check.suggestion.startswith("Add the numbers")


def test_years_and_version_numbers_are_not_measurable_changes():
    assert check_outcome("Increase revenue by 2025").measurable_changes == ()
    assert check_outcome("Launch v2 by Q3").is_output
    assert check_outcome("Launch the 2025 catalogue").is_output


@pytest.mark.parametrize("description", [None, "", "   \n"])
def test_empty_description_is_not_flagged(description: str | None):
    check = check_outcome(description)
    assert check == OutcomeCheck(is_output=False, triggers=(), reasons=("no description to check",))


def test_check_is_serialisable():
    check = check_outcome("Launch the partner portal")
    assert msgspec.json.decode(msgspec.json.encode(check), type=OutcomeCheck) == check
