// The sandbox's consent page: the new user's fields count only while "A new Calendly user" is
// picked. Otherwise they are hidden and disabled (so neither sent nor checked); for a new
// user, name and email are required before the form can be sent.
"use strict";

(function () {
  const form = document.querySelector("form[action='/oauth/authorize']");
  const group = document.getElementById("new-user-fields");
  if (!form || !group) return;
  const choices = [...form.querySelectorAll("input[type=radio][name=user_id]")];

  function show() {
    const creating = choices.some((c) => c.checked && c.value === "new");
    group.hidden = !creating;
    group.disabled = !creating;
    for (const name of ["new_name", "new_email"]) {
      const field = form.elements.namedItem(name);
      if (field) field.required = creating;
    }
  }

  for (const choice of choices) choice.addEventListener("change", show);
  show();
})();
