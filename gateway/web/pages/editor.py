"""Local editing (admin): model and device forms, the YAML editor, deleting, and batch import with a preview.

Every change goes through the runtime, which validates like `fieldgate check`, writes the audit log and refuses
resources owned by a configuration file or the registry; those are shown read-only with a notice.
"""

from __future__ import annotations

from typing import Any

from litestar import get, post
from litestar.params import FromQuery
from litestar.response import Redirect, Template

from gateway.errors import ConfigError, FieldgateError, NotFound
from gateway.web import editing
from gateway.web.pages.common import AnyRequest, actor, flash, form_upload, gateway_of, render
from gateway.web.security import BODY_DOCUMENTS, requires
from gateway.webkit import forms
from gateway.webkit.pages import form_fields, see_other

admin = [requires("admin")]
EXTRA_ROWS = 3
KIND_PAGES = {"DeviceModel": "/models", "Device": "/devices", "Endpoint": "/endpoints", "Route": "/endpoints"}


async def _existing(request: AnyRequest, kind: str, namespace: str, name: str
                    ) -> tuple[dict[str, Any] | None, str]:
    """The stored document (None when new) and why it is read-only ("" when it may be edited)."""
    if not name:
        return None, ""
    gateway = gateway_of(request)
    namespace = namespace or "default"
    document = editing.running_document(gateway, kind, namespace, name)
    if document is None:
        try:
            document, _ = await gateway.store.resources.get(kind, namespace, name)
        except NotFound:
            return None, ""
    return document, editing.read_only_reason(editing.owner(gateway, kind, namespace, name))


# --- models --------------------------------------------------------------------------------------------------


def _model_context(document: dict[str, Any]) -> dict[str, Any]:
    rows = list(document.get("properties", [])) + [{} for _ in range(EXTRA_ROWS)]
    return {"doc": document, "rows": rows, "labels": editing.labels_to_text(document.get("labels", {})),
            "types": forms.PROPERTY_TYPES}


@get("/models/edit", guards=admin, summary="The model form (new, or ?namespace=&name= to edit)",
     include_in_schema=False)
async def model_form(request: AnyRequest, namespace: FromQuery[str] = "default", name: FromQuery[str] = "") -> Template:
    document, read_only = await _existing(request, "DeviceModel", namespace, name)
    if name and document is None:
        raise NotFound(f"no DeviceModel {namespace}/{name}")
    return render(request, "model_form.html", is_new=document is None, read_only=read_only, problems=[],
                  **_model_context(document or {"namespace": namespace}))


@post("/models/edit", guards=admin, summary="Create or update a model from the form", include_in_schema=False,
      status_code=303, request_max_body_size=BODY_DOCUMENTS)
async def model_save(request: AnyRequest) -> Template | Redirect:
    fields = await form_fields(request)
    document: dict[str, Any] = {"namespace": fields.get("namespace", "default"), "name": fields.get("name", "")}
    try:
        document = editing.model_from_form(fields)
        who, address = actor(request)
        await editing.apply_documents(gateway_of(request), [document], actor=who, address=address)
    except FieldgateError as exc:
        return render(request, "model_form.html", status_code=400, is_new=fields.get("is_new") == "1",
                      read_only="", problems=editing.problems_of(exc), **_model_context(document))
    flash(request, "ok", f"model {document['namespace']}/{document['name']} saved")
    return see_other("/models")


# --- devices -------------------------------------------------------------------------------------------------


def _device_context(request: AnyRequest, document: dict[str, Any]) -> dict[str, Any]:
    gateway = gateway_of(request)
    rows = [{**prop, "visitor": forms.flow(prop.get("visitor")), "desired": forms.flow(prop.get("desired"))}
            for prop in document.get("properties", [])]
    named = {row["name"] for row in rows}
    model = gateway.config.models.get((document.get("namespace", "default"), document.get("model") or ""))
    if model is not None:  # offer the model's properties the device does not map yet
        rows += [{"name": p.name} for p in model.properties if p.name not in named]
    rows += [{} for _ in range(EXTRA_ROWS)]
    protocol = document.get("protocol") or {}
    return {"doc": document, "rows": rows, "labels": editing.labels_to_text(document.get("labels", {})),
            "protocol_name": protocol.get("name", ""), "protocol_config": forms.flow(protocol.get("config") or {}),
            "models": sorted(gateway.config.models.values(), key=lambda m: (m.namespace, m.name)),
            "protocols": sorted(gateway.protocols)}


@get("/devices/edit", guards=admin, summary="The device form (new, or ?namespace=&name= to edit)",
     include_in_schema=False)
async def device_form(request: AnyRequest, namespace: FromQuery[str] = "default", name: FromQuery[str] = "",
                      model: FromQuery[str] = "") -> Template:
    document, read_only = await _existing(request, "Device", namespace, name)
    if name and document is None:
        raise NotFound(f"no Device {namespace}/{name}")
    initial = document or {"namespace": namespace, "model": model, "protocol": {"name": "virtual", "config": {}}}
    return render(request, "device_form.html", is_new=document is None, read_only=read_only, problems=[],
                  **_device_context(request, initial))


@post("/devices/edit", guards=admin, summary="Create or update a device from the form", include_in_schema=False,
      status_code=303, request_max_body_size=BODY_DOCUMENTS)
async def device_save(request: AnyRequest) -> Template | Redirect:
    fields = await form_fields(request)
    document: dict[str, Any] = {"namespace": fields.get("namespace", "default"), "name": fields.get("name", "")}
    try:
        document = editing.device_from_form(fields)
        who, address = actor(request)
        await editing.apply_documents(gateway_of(request), [document], actor=who, address=address)
    except FieldgateError as exc:
        return render(request, "device_form.html", status_code=400, is_new=fields.get("is_new") == "1",
                      read_only="", problems=editing.problems_of(exc), **_device_context(request, document))
    flash(request, "ok", f"device {document['namespace']}/{document['name']} saved")
    return see_other(f"/devices/{document['namespace']}/{document['name']}")


# --- YAML editor and delete ----------------------------------------------------------------------------------


@get("/editor", guards=admin, summary="The YAML editor (?kind=&namespace=&name= loads a resource)",
     include_in_schema=False)
async def yaml_editor(request: AnyRequest, kind: FromQuery[str] = "", namespace: FromQuery[str] = "default",
                      name: FromQuery[str] = "") -> Template:
    text, read_only = "", ""
    if kind and name:
        document, read_only = await _existing(request, kind, namespace, name)
        if document is None:
            raise NotFound(f"no {kind} {namespace}/{name}")
        text = editing.dump_yaml([document])
    return render(request, "editor.html", text=text, read_only=read_only, problems=[], checked=False)


@post("/editor", guards=admin, summary="Check or apply YAML documents", include_in_schema=False, status_code=303,
      request_max_body_size=BODY_DOCUMENTS)
async def yaml_apply(request: AnyRequest) -> Template | Redirect:
    fields = await form_fields(request)
    text = fields.get("yaml", "")
    gateway = gateway_of(request)
    try:
        if fields.get("action") == "check":
            preview = editing.preview(gateway, text)
            return render(request, "editor.html", text=text, read_only="", problems=[], checked=True,
                          preview=preview)
        who, address = actor(request)
        changed = await editing.apply_yaml(gateway, text, actor=who, address=address)
    except FieldgateError as exc:
        return render(request, "editor.html", status_code=400, text=text, read_only="",
                      problems=editing.problems_of(exc), checked=False)
    flash(request, "ok", f"applied: {', '.join(changed) or 'nothing changed'}")
    return see_other("/editor")


@post("/resources/delete", guards=admin, summary="Delete a local resource", include_in_schema=False,
      status_code=303)
async def delete_resource(request: AnyRequest) -> Redirect:
    fields = await form_fields(request)
    kind, namespace, name = fields.get("kind", ""), fields.get("namespace", "default"), fields.get("name", "")
    back = KIND_PAGES.get(kind, "/")
    who, address = actor(request)
    try:
        await editing.delete(gateway_of(request), kind, namespace, name, actor=who, address=address)
    except FieldgateError as exc:
        flash(request, "error", f"{kind} {namespace}/{name}: {exc}")
        return see_other(back)
    flash(request, "ok", f"{kind} {namespace}/{name} deleted")
    return see_other(back)


# --- batch import --------------------------------------------------------------------------------------------


def _templates(request: AnyRequest) -> list[str]:
    return sorted(gateway_of(request).config.devices)


@get("/import", guards=admin, summary="Batch import of devices (CSV or YAML upload)", include_in_schema=False)
async def import_form(request: AnyRequest) -> Template:
    return render(request, "import.html", problems=[], preview=None, templates=_templates(request))


@post("/import/preview", guards=admin, summary="Preview an uploaded CSV or YAML file", include_in_schema=False,
      status_code=200, request_max_body_size=BODY_DOCUMENTS)
async def import_preview(request: AnyRequest) -> Template:
    gateway = gateway_of(request)
    fields = await form_fields(request)
    upload = await form_upload(request, "file")
    try:
        if upload is None:
            raise ConfigError("choose a CSV or YAML file to upload")
        filename, data = upload
        if filename.lower().endswith(".csv"):
            template = None
            if fields.get("template"):
                namespace, _, name = fields["template"].partition("/")
                template = editing.running_document(gateway, "Device", namespace, name)
            yaml_text = await editing.csv_to_yaml(filename, data, template)
        else:
            yaml_text = editing.upload_text(data, filename)
        preview = editing.preview(gateway, yaml_text)
    except FieldgateError as exc:
        return render(request, "import.html", status_code=400, problems=editing.problems_of(exc), preview=None,
                      templates=_templates(request))
    return render(request, "import.html", problems=[], preview=preview, templates=_templates(request))


@post("/import/apply", guards=admin, summary="Apply a previewed import", include_in_schema=False, status_code=303,
      request_max_body_size=BODY_DOCUMENTS)
async def import_apply(request: AnyRequest) -> Template | Redirect:
    fields = await form_fields(request)
    who, address = actor(request)
    try:
        changed = await editing.apply_yaml(gateway_of(request), fields.get("yaml", ""), actor=who, address=address)
    except FieldgateError as exc:
        return render(request, "import.html", status_code=400, problems=editing.problems_of(exc), preview=None,
                      templates=_templates(request))
    flash(request, "ok", f"imported {len(changed)} resources")
    return see_other("/devices")
