"""Everything that runs and faces the outside, in rooms by job, in the order a study
meets them:

- :mod:`node.network`: the DICOM network and HTTP peers (listener, access policy, TLS,
  the C-ECHO/C-STORE client, the STOW-RS client, pynetdicom's internals in one place);
- :mod:`node.pipeline`: a study's steps (completion, routing, triage, inference,
  encoding, delivery, notification) and its lifecycle;
- :mod:`node.jobs`: the job framework the steps run in (job kinds and payloads, the
  worker loop, the job context);
- :mod:`node.web`: the REST API, the worklist page and ``/metrics``;
- :mod:`node.runner`: the ``ainode`` command, ``ainode serve`` and the process supervisor.

Imports point down the list above, except that :mod:`node.network` and :mod:`node.jobs`
import no other room, and :mod:`node.runner` may import every room.
"""
