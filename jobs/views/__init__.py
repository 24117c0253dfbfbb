"""The web UI's pages, one module per page or group of pages. Server-rendered; each page
reads through the selectors and writes through the services the API uses, with the
API's serializers for the forms, so a form shows the API's own field errors."""
