"""The campaign and frequency policy forms refuse what would silently send nothing or never run."""

import pytest

from campaigns.admin.campaigns import CampaignForm
from campaigns.models import Campaign, FrequencyPolicy

from .campaign_fixtures import campaign, shop

pytestmark = pytest.mark.django_db


def _form(world, **fields) -> CampaignForm:
    data = {
        "name": "Add-ons",
        "kind": Campaign.Kind.ONE_OFF,
        "segment": world["segment"].pk,
        "template": world["template"].pk,
        "offers_per_email": 3,
        "min_offer_score": 0,
        "allowed_categories": "[]",
        "delay_hours": 0,
        "trigger_skus": "[]",
        "trigger_categories": "[]",
        "trigger_lookback_days": 3,
        "holdout_percent": 10,
        "utm_source": "xsell",
        "utm_medium": "email",
        "schedule_cron": "",
        "schedule_timezone": "UTC",
    }
    return CampaignForm(data={**data, **fields})


def _weekly(world, **fields) -> Campaign:
    return Campaign.objects.create(
        name="Weekly",
        kind="recurring",
        schedule_cron="0 9 * * 1",
        template=world["template"],
        segment=world["segment"],
        **fields,
    )


def test_a_sound_campaign_is_accepted():
    world = shop(recipients=1)
    form = _form(world, allowed_categories='["accessories"]', trigger_skus='["CASE"]')
    assert form.is_valid(), form.errors


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"kind": "recurring", "schedule_cron": "99 99 * * 9"}, "schedule_cron", "not in 0-59 for Minutes"),
        ({"kind": "recurring", "schedule_cron": "0 9 * *"}, "schedule_cron", "Give five cron fields"),
        ({"kind": "recurring", "schedule_timezone": "London"}, "schedule_timezone", "not an IANA time zone"),
        ({"kind": "recurring", "schedule_cron": "0 9 * * 7"}, "schedule_cron", "Sunday is 0, not 7"),
        ({"kind": "post_purchase", "delay_hours": 99_999_999}, "delay_hours", "less than or equal to 8784"),
        ({"trigger_lookback_days": 99_999_999}, "trigger_lookback_days", "less than or equal to 366"),
        ({"trigger_min_value": -10}, "trigger_min_value", "greater than or equal to 0"),
        ({"send_at": "2020-01-01 09:00:00"}, "send_at", "That time has passed"),
        ({"min_offer_score": -3}, "min_offer_score", "from 0 to 1"),
        ({"allowed_categories": '{"a": 1}'}, "allowed_categories", "JSON list of names"),
        ({"trigger_skus": '"X1"'}, "trigger_skus", "JSON list of names"),
        ({"trigger_categories": '["Coffee"]'}, "trigger_categories", "No product has 'Coffee'"),
        ({"trigger_skus": '["CASE", "NOPE-1"]'}, "trigger_skus", "No product has 'NOPE-1'"),
    ],
)
def test_a_campaign_that_could_not_run_as_meant_is_refused(fields, field, message):
    world = shop(recipients=1)
    form = _form(world, **fields)
    assert not form.is_valid()
    assert message in " ".join(form.errors.get(field, [])), form.errors


def test_policy_constraints_explain_themselves_in_the_admin(admin_client):
    from django.urls import reverse

    FrequencyPolicy.objects.create(name="Default", is_default=True)
    add = reverse("admin:campaigns_frequencypolicy_add")
    base = {
        "name": "Second",
        "max_messages": 2,
        "window_days": 7,
        "min_gap_hours": 24,
        "quiet_deadline_hours": 24,
    }
    page = admin_client.post(add, {**base, "is_default": "on"}).content.decode()
    assert "Another policy is already the default" in page
    page = admin_client.post(add, {**base, "quiet_start": "22:00"}).content.decode()
    assert "Give both the start and the end of quiet hours, or neither." in page
    page = admin_client.post(add, {**base, "quiet_start": "22:00", "quiet_end": "22:00"}).content.decode()
    assert "Quiet hours must start and end at different times." in page
    page = admin_client.post(
        add, {**base, "window_days": 99_999_999, "min_gap_hours": 99_999_999}
    ).content.decode()
    assert "less than or equal to 366" in page and "less than or equal to 8784" in page  # was a 500 on Start
    assert FrequencyPolicy.objects.count() == 1


def test_a_campaign_that_sent_keeps_its_audience_and_measurement_and_cannot_be_deleted(admin_client):
    from django.urls import reverse

    from campaigns.models import Message

    world = shop(recipients=2)
    c = Campaign.objects.create(
        name="Sent",
        template=world["template"],
        segment=world["segment"],
        status="sending",
        holdout_percent=10,
    )
    change = reverse("admin:campaigns_campaign_change", args=[c.pk])
    page = admin_client.get(change).content.decode()
    assert 'name="holdout_percent"' not in page and 'name="segment"' not in page  # read only now
    assert 'name="offers_per_email"' in page  # still adjustable while it sends
    assert admin_client.get(reverse("admin:campaigns_campaign_delete", args=[c.pk])).status_code == 200
    Message.objects.create(campaign=c, customer=world["recipients"][0], status="uncertain")
    assert admin_client.get(reverse("admin:campaigns_campaign_delete", args=[c.pk])).status_code == 403
    listing = admin_client.get(reverse("admin:campaigns_campaign_changelist")).content.decode()
    assert "delete_selected" not in listing
    Campaign.objects.filter(pk=c.pk).update(status="done")
    page = admin_client.get(change).content.decode()
    assert 'name="offers_per_email"' not in page and 'name="name"' not in page  # a record now


def test_a_recurring_campaign_between_runs_keeps_its_audience_and_measurement(admin_client):
    from django.urls import reverse

    world = shop(recipients=1)
    c = _weekly(world, status="scheduled")  # back to scheduled after a run
    c.runs.create(key="2026-11-23T09")
    page = admin_client.get(reverse("admin:campaigns_campaign_change", args=[c.pk])).content.decode()
    assert 'name="holdout_percent"' not in page and 'name="kind"' not in page
    from django.forms import modelform_factory

    # As the admin builds the form once kind is read only: without it.
    fields = [f for f in CampaignForm.Meta.fields if f not in ("kind", "segment", "holdout_percent")]
    form = modelform_factory(Campaign, form=CampaignForm, fields=fields)(
        instance=c, data={"schedule_cron": "99 99 * * 9"}
    )
    form.is_valid()
    assert "not in 0-59 for Minutes" in " ".join(form.errors.get("schedule_cron", []))  # still validated


def test_preview_and_send_test_use_a_real_customer_only_for_who_may_see_customers(client):
    from django.contrib.auth.models import Permission, User
    from django.urls import reverse

    world = shop(recipients=1)
    customer = world["recipients"][0]
    user = User.objects.create_user("writer", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_emailtemplate", "change_emailtemplate"])
    )
    client.force_login(user)
    url = reverse("admin:campaigns_emailtemplate_preview", args=[world["template"].pk])
    page = client.get(url, {"customer": customer.external_id}).content.decode()
    assert customer.first_name not in page and "Ada" in page  # the sample customer


def test_editing_a_started_schedule_moves_beats_task_and_keeps_it_paused(admin_client):
    """Runs are keyed by the schedule's slots: a beat task left on the old times would find a slot of the
    new schedule already planned and send nothing."""
    from django.urls import reverse

    from campaigns.lifecycle import campaign_pause, campaign_start

    world = shop(recipients=1)
    c = _weekly(world)
    campaign_start(campaign=c)
    campaign_pause(campaign=c)
    page = admin_client.get(reverse("admin:campaigns_campaign_change", args=[c.pk]))
    data = {k: v for k, v in page.context["adminform"].form.initial.items() if v is not None}
    data.update(
        schedule_cron="30 7 * * 2",
        schedule_timezone="Europe/London",
        template=world["template"].pk,
        allowed_categories="[]",
        trigger_skus="[]",
        trigger_categories="[]",
    )
    data.pop("periodic_task", None)
    response = admin_client.post(reverse("admin:campaigns_campaign_change", args=[c.pk]), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    c.refresh_from_db()
    task = c.periodic_task
    crontab = task.crontab
    assert (crontab.minute, crontab.hour, crontab.day_of_week, str(crontab.timezone)) == (
        "30",
        "7",
        "2",
        "Europe/London",
    )
    assert task.enabled is False  # still paused


def test_a_campaign_paused_while_it_waits_for_its_time_is_scheduled_again_when_resumed():
    """A one-off paused before its time was marked done on resume, planning nothing, and never sent."""
    import datetime as dt

    from django.utils import timezone

    from campaigns.lifecycle import campaign_pause, campaign_resume, campaign_start, campaigns_due

    world = shop(recipients=2)
    later = timezone.now() + dt.timedelta(days=1)
    one_off = campaign(template=world["template"], segment=world["segment"], send_at=later)
    weekly = _weekly(world)
    for c in (one_off, weekly):
        campaign_start(campaign=c)
        campaign_pause(campaign=c)
        campaign_resume(campaign=c)
        c.refresh_from_db()
        assert (c.status, c.finished_at, c.messages.count()) == ("scheduled", None, 0), c.name
    assert weekly.periodic_task.enabled
    assert campaigns_due() == [] and campaigns_due(now=later) == [one_off.pk]  # it starts at its time
    Campaign.objects.filter(pk=one_off.pk).update(send_at=None)  # "send when started", edited meanwhile
    assert campaigns_due() == [one_off.pk]
    campaign_start(campaign=one_off, now=later, enqueue=False)
    assert one_off.messages.filter(status="planned").count() == 2


def test_cancel_asks_first_and_says_what_each_campaign_would_skip(admin_client):
    from django.urls import reverse

    from campaigns.lifecycle import campaign_start

    world = shop(recipients=3)
    c = campaign(template=world["template"], segment=world["segment"])
    campaign_start(campaign=c, enqueue=False)
    changelist = reverse("admin:campaigns_campaign_changelist")
    page = admin_client.post(changelist, {"action": "cancel", "_selected_action": [c.pk]})
    text = page.content.decode()
    assert page.status_code == 200 and "3 planned messages would be skipped" in text
    assert "Yes, cancel 1 campaign" in text and 'name="confirm" value="yes"' in text
    c.refresh_from_db()
    assert c.status == "sending"  # nothing changed yet
    admin_client.post(changelist, {"action": "cancel", "_selected_action": [c.pk], "confirm": "yes"})
    c.refresh_from_db()
    assert c.status == "cancelled" and c.messages.filter(skip_reason="cancelled").count() == 3


def test_resuming_a_cancelled_recurring_campaign_is_refused_and_leaves_its_schedule_off():
    from campaigns.lifecycle import CampaignStateError, campaign_cancel, campaign_resume, campaign_start

    world = shop(recipients=1)
    c = _weekly(world)
    campaign_start(campaign=c)
    campaign_cancel(campaign=c)
    with pytest.raises(CampaignStateError):
        campaign_resume(campaign=c)
    c.refresh_from_db()
    assert c.status == "cancelled" and c.periodic_task.enabled is False


def test_a_template_that_needs_an_order_is_refused_for_campaigns_without_one():
    """One-off and recurring emails have no triggering order: such a template passed the save check (its
    sample has an order) and then every email was skipped as a render error."""
    from campaigns.models import EmailTemplate

    world = shop(recipients=1)
    needs_order = EmailTemplate.objects.create(
        name="Order", subject="Your order {{ order.external_id }}", html="<p>x</p>", text="x"
    )
    form = _form(world, template=needs_order.pk)
    assert not form.is_valid()
    assert "needs a post-purchase campaign" in " ".join(form.errors["template"])
    assert "guard it with {% if order %}" in " ".join(form.errors["template"])
    assert _form(world, template=needs_order.pk, kind=Campaign.Kind.POST_PURCHASE).is_valid()


def test_a_preview_for_a_real_customer_links_to_the_offered_products(admin_client):
    from campaigns.admin.campaigns import _preview_context
    from campaigns.rendering import sample_context

    world = shop(recipients=1)
    context = _preview_context(world["recipients"][0])
    sample_urls = {o["url"] for o in sample_context()["offers"]}
    assert context["offers"] and context["offers"] != sample_context()["offers"]
    for offer in context["offers"]:
        assert offer["url"] not in sample_urls and offer["sku"].lower() in offer["url"].lower()


def test_a_template_layout_is_one_of_the_shared_layouts():
    from campaigns.admin.campaigns import EmailTemplateForm

    data = {"name": "t", "subject": "Hi", "html": "<p>x</p>", "text": "x"}
    assert EmailTemplateForm(data={**data, "layout": "email/base.html"}).is_valid()
    form = EmailTemplateForm(data={**data, "layout": "../../etc/passwd"})
    assert not form.is_valid() and "Select a valid choice" in " ".join(form.errors["layout"])


def test_preview_edits_renders_the_fields_on_screen_and_saves_nothing(admin_client):
    from django.urls import reverse

    from campaigns.models import EmailTemplate

    template = EmailTemplate.objects.create(name="t", subject="Saved", html="<p>saved body</p>", text="x")
    page = admin_client.get(reverse("admin:campaigns_emailtemplate_change", args=[template.pk])).content
    assert b'formtarget="xsell-frame"' in page and b'name="xsell-frame"' in page
    url = reverse("admin:campaigns_emailtemplate_preview", args=[template.pk])
    draft = {
        "subject": "Draft",
        "html": "<p>edited {{ customer.first_name }}</p>",
        "text": "x",
        "layout": "../x",
    }
    response = admin_client.post(url, draft)
    assert b"edited Ada" in response.content and b"saved body" not in response.content
    assert "sandbox" in response["Content-Security-Policy"]
    template.refresh_from_db()
    assert template.html == "<p>saved body</p>"
    # As "Send test": only for who may edit templates (a viewer would render any source).
    from django.contrib.auth.models import Permission, User

    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_emailtemplate"))
    admin_client.force_login(viewer)
    assert admin_client.post(url, draft).status_code == 403
    assert (
        b'formtarget="xsell-frame"'
        not in admin_client.get(reverse("admin:campaigns_emailtemplate_change", args=[template.pk])).content
    )
