mod schedules_opencode;
