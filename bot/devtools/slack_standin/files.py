"""The Slack stand-in's external file upload: ``files.getUploadURLExternal``, the upload itself and
``files.completeUploadExternal``."""

from __future__ import annotations

import copy
from urllib.parse import quote

from bot.devtools.slack_standin.records import Answer, JSONDict, _TS_BASE, StoredMessage, Upload, _err, _maybe_json


class _FileMethods:
    """Web API methods of ``SlackStandIn`` about file uploads."""

    def _files_get_upload_url_external(self, body: JSONDict) -> JSONDict:
        filename, length = body.get("filename"), body.get("length")
        if not filename or length is None or not str(length).isdigit():
            return _err("invalid_arguments")
        file_id = self._next_id("F")
        self._uploads[file_id] = Upload(file_id=file_id, filename=filename, length=int(length),
                                        alt_txt=body.get("alt_txt"), snippet_type=body.get("snippet_type"))
        return {"ok": True, "upload_url": f"{self._origin}/upload/{file_id}", "file_id": file_id}

    def _answer_upload(self, file_id: str, raw: bytes) -> Answer:
        upload = self._uploads.get(file_id)
        if upload is None:
            return 404, "file_not_found", {}
        upload.content = raw
        return 200, f"OK - {len(raw)}", {}

    def _files_complete_upload_external(self, body: JSONDict) -> JSONDict:
        entries = _maybe_json(body.get("files"))
        if not isinstance(entries, list) or not entries:
            return _err("invalid_arguments")
        uploads: list[tuple[Upload, JSONDict]] = []
        for entry in entries:
            upload = self._uploads.get(entry.get("id", "")) if isinstance(entry, dict) else None
            if upload is None or upload.content is None or upload.completed:
                return _err("file_not_found")
            uploads.append((upload, entry))
        channels = [c for c in (self._resolve_channel(body.get("channel_id")),) if c]
        channels += [c for c in (self._resolve_channel(x.strip()) for x in str(body.get("channels") or "").split(","))
                     if c and c not in channels]
        for channel in channels:
            refused = self._refuse_outside(channel)
            if refused:
                return refused
        thread_ts = body.get("thread_ts") or None
        comment = body.get("initial_comment")
        files = []
        for upload, entry in uploads:
            upload.completed, upload.channels, upload.thread_ts = True, list(channels), thread_ts
            upload.initial_comment, upload.title = comment, entry.get("title") or upload.filename
            files.append(self._file_object(upload))
        for channel in channels:
            self._store_message(StoredMessage(
                channel=channel, ts=self._next_ts(), text=comment or "", thread_ts=thread_ts,
                user=self.bot_user_id, bot_id=self.bot_id, files=copy.deepcopy(files),
                via="files.completeUploadExternal"))
        return {"ok": True, "files": files}

    def _file_object(self, upload: Upload) -> JSONDict:
        size = len(upload.content or b"")
        ext = upload.filename.rsplit(".", 1)[-1] if "." in upload.filename else "binary"
        return {"id": upload.file_id, "created": _TS_BASE, "timestamp": _TS_BASE, "name": upload.filename,
                "title": upload.title, "filetype": ext, "user": self.bot_user_id, "size": size,
                "url_private": f"{self._origin}/files/{upload.file_id}/{quote(upload.filename)}",
                "permalink": f"https://{self.team_domain}.slack.com/files/{self.bot_user_id}/{upload.file_id}/"
                             f"{quote(upload.filename)}",
                "channels": list(upload.channels), "is_public": False}
