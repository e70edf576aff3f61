// Renders /openapi.json with Swagger UI. No online validator: the page talks to this service only.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  validatorUrl: null,
  deepLinking: true,
});
