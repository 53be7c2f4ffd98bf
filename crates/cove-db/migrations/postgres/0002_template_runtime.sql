-- The backend a template's sandboxes run on unless a create names one (NULL: the server's
-- default).
ALTER TABLE template_templates ADD COLUMN runtime TEXT;
