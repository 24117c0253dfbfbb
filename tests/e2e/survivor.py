"""The job the failover tests kill a node under: long on node-a, so that it surely still
runs there when its agent is killed however long node-b takes to start; short on node-b.
It writes start and end lines, with the node's name, to `marker`."""


def submit_survivor(api, marker) -> int:
    """Submit it; its id."""
    response = api.post(
        "/api/jobs/",
        {
            "name": "survivor",
            "command": [
                "sh",
                "-c",
                f"echo start-$NODE_NAME >> {marker}; "
                f'if [ "$NODE_NAME" = node-a ]; then sleep 60; else sleep 1; fi; '
                f"echo end-$NODE_NAME >> {marker}",
            ],
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()["id"]
